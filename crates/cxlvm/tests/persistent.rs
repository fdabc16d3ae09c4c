//! Persistent CXL capacity through the binary: its files are the single source of truth, even
//! when cxlvm is killed.

mod common;

use common::tmp;

/// Persistent capacity keeps its file as the single source of truth: after a SIGKILL in the
/// middle of a run, each device's file holds every word written to an interleaved persistent
/// region, on the MMIO path (256 B) and on the stitched mapping (16 KiB: 32 768 mappings for the
/// 512 MiB region, within the default `vm.max_map_count`), with the guest's XSAVEC and AVX data
/// included.
#[test]
fn persistent_files_hold_every_byte_after_sigkill() {
    common::require_kvm();
    for gran in [256u64, 16384] {
        let dir = tmp("sigkill", &format!("g{gran}"));
        std::fs::create_dir_all(&dir).unwrap();
        let files: Vec<std::path::PathBuf> =
            (0..2).map(|i| dir.join(format!("pmem{i}.img"))).collect();
        for f in &files {
            let _ = std::fs::remove_file(f);
        }
        let mut toml = String::from("[[host_bridge]]\nid = \"hb0\"\nroot_ports = 2\n");
        for (i, f) in files.iter().enumerate() {
            toml += &format!(
                "[[device]]\nid = \"p{i}\"\nhost_bridge = \"hb0\"\nroot_port = {i}\npersistent = \"256M\"\npersistent_file = \"{}\"\n",
                f.display()
            );
        }
        toml += "[[window]]\nid = \"w0\"\nsize = \"512M\"\ntargets = [\"hb0\"]\n";
        let config = dir.join("topology.toml");
        std::fs::write(&config, toml).unwrap();
        let serial = dir.join("serial.log");
        let expect_direct = u8::from(gran >= 4096);
        let (words, stride) = (1024u64, gran / 2 + 8);
        let started = std::time::Instant::now();
        let mut child = common::bin()
            .args(["run", "--guest", &common::guest("cxl"), "--config"])
            .arg(&config)
            .args([
                "--memory",
                "128M",
                "--serial-file",
                serial.to_str().unwrap(),
                "--cmdline",
                &format!(
                    "mode=region direct=1 expect_direct={expect_direct} words={words} stride={stride} gran={gran} hold=1"
                ),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cxlvm runs");
        let (ended, seen) = common::wait_for_log_lines(
            &mut child,
            &serial,
            &["region holding"],
            started,
            std::time::Duration::from_secs(120),
        );
        assert!(
            ended.is_none() && seen,
            "{gran} B: the guest did not reach its hold ({ended:?}):\n{}",
            std::fs::read_to_string(&serial).unwrap_or_default()
        );
        // SIGKILL: no exit path of cxlvm runs.
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        let log = std::fs::read_to_string(&serial).unwrap();
        assert!(log.contains("direct ok"), "{log}");
        let bytes: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
        let base = 0x100_0000_0000u64; // the first window cxlvm places
        let mut checked = 0;
        for k in 0..words {
            let off = k * stride;
            if (0x1000..0x2020).contains(&off) {
                continue; // the guest's XSAVEC area and AVX store, checked by the guest
            }
            let chunk = off / gran;
            let (dev, dpa) = ((chunk % 2) as usize, chunk / 2 * gran + off % gran);
            let at = dpa as usize;
            let got = u64::from_le_bytes(bytes[dev][at..at + 8].try_into().unwrap());
            assert_eq!(
                got,
                0xC710_0000_0000_0000 | (base + off),
                "{gran} B: pmem{dev} offset {dpa:#x} (HPA offset {off:#x})"
            );
            checked += 1;
        }
        assert!(checked > 900, "{checked}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
