//! Building a machine that boots Linux: in-kernel interrupt controllers and PIT, the 16550 on
//! IRQ 4, ACPI power registers, the e820/PVH memory map, and the kernel loaded through
//! `cxlvm-boot`. The CXL platform is the same as for test guests.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use cxlvm_boot::{Entry, LinuxBoot, MemEntry, MemKind, RamRange};
use cxlvm_devices::{AcpiSleep, PioBus, ResetRegister, Serial, SerialIrq, Stopper, acpi_sleep};
use cxlvm_kvm::{Hypervisor, LinuxEntry, SlotTable};
use cxlvm_memory::{AddressSpace, RamBacking};
use cxlvm_x86::layout::{self, ports};
use tracing::info;

use crate::config::SerialOut;
use crate::config::{ConfigError, LinuxKernel, MachineConfig};
use crate::machine::{
    CXL_LAYOUT, add_cxl_ports, build_cxl, check_topology, place_ram, serial_writer,
};
use cxlvm_platform::PlatformLayout;

/// Linux machines put the BAR aperture below 4 GiB, after low RAM: a root port forwards
/// non-prefetchable memory only through its 32-bit window, so 64-bit non-prefetchable BARs
/// (cxlvm's register BARs) must sit below 4 GiB for Linux to keep or reassign them there.
const LINUX_LAYOUT: PlatformLayout = PlatformLayout {
    aperture_base: 0xc000_0000,
    aperture_size: 0x1000_0000,
    ..CXL_LAYOUT
};
use crate::{Machine, VmmError};

/// The IOAPIC's MMIO page (KVM's in-kernel IOAPIC).
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// The local APICs' MMIO page.
pub const LAPIC_BASE: u64 = 0xfee0_0000;
/// COM1's interrupt line (ISA IRQ 4, GSI 4).
pub const COM1_GSI: u32 = 4;
/// Where the ACPI tables go: the BIOS area below 1 MiB (reserved as ACPI data).
pub const ACPI_BASE: u64 = layout::ACPI_TABLES;
/// Room for the ACPI tables.
pub const ACPI_SIZE: u64 = 0x2_0000;

/// The memory map Linux is given: RAM, the reserved EBDA/BIOS area (ACPI tables in it), the
/// ECAM reserved (Linux wants MCFG regions reserved), the high RAM. CXL windows, CHBCRs and the
/// BAR aperture are holes: neither RAM nor reserved.
pub(crate) fn memory_map(ram: &[(u64, u64, u64)], ecam: Option<(u64, u64)>) -> Vec<MemEntry> {
    let mut map = Vec::new();
    for (i, &(gpa, size, _)) in ram.iter().enumerate() {
        if i == 0 {
            map.push(MemEntry {
                base: 0,
                size: cxlvm_boot::layout::LOW_RESERVED,
                kind: MemKind::Ram,
            });
            map.push(MemEntry {
                base: cxlvm_boot::layout::LOW_RESERVED,
                size: ACPI_BASE - cxlvm_boot::layout::LOW_RESERVED,
                kind: MemKind::Reserved,
            });
            map.push(MemEntry {
                base: ACPI_BASE,
                size: ACPI_SIZE,
                kind: MemKind::Acpi,
            });
            map.push(MemEntry {
                base: cxlvm_boot::layout::HIGH_MEMORY,
                size: gpa + size - cxlvm_boot::layout::HIGH_MEMORY,
                kind: MemKind::Ram,
            });
        } else {
            map.push(MemEntry {
                base: gpa,
                size,
                kind: MemKind::Ram,
            });
        }
    }
    if let Some((base, size)) = ecam {
        map.push(MemEntry {
            base,
            size,
            kind: MemKind::Reserved,
        });
    }
    map.sort_by_key(|e| e.base);
    map
}

/// The kernel command line: the user's, plus the TSC frequency when the hypervisor bit is
/// hidden. Without the bit the kernel has no kvmclock and no hypervisor CPUID leaf to learn the
/// TSC frequency from; on AMD no CPUID leaf gives it at all, and the hardware-reduced ACPI
/// platform has no PIT interrupt, HPET or PM timer to calibrate against. KVM's TSC is invariant
/// (constant and non-stop), so cxlvm states its frequency (`tsc_early_khz`) and that it is
/// reliable, unless the user's command line already says otherwise.
pub(crate) fn kernel_cmdline(user: &str, hypervisor_bit: bool, tsc_khz: Option<u32>) -> String {
    // Everything after a lone `--` goes to init, not the kernel: cxlvm's additions go before it
    // (the user's text is kept byte for byte otherwise).
    let at = user
        .match_indices("--")
        .map(|(i, _)| i)
        .find(|&i| {
            let before = user[..i].chars().next_back();
            let after = user[i + 2..].chars().next();
            before.is_none_or(char::is_whitespace) && after.is_none_or(char::is_whitespace)
        })
        .unwrap_or(user.len());
    let (kernel, init) = user.split_at(at);
    let mut cmdline = kernel.trim_end().to_owned();
    if let (false, Some(khz)) = (hypervisor_bit, tsc_khz) {
        if !kernel.contains("tsc_early_khz=") {
            cmdline.push_str(&format!(" tsc_early_khz={khz}"));
        }
        if !kernel.split_whitespace().any(|w| w.starts_with("tsc=")) {
            cmdline.push_str(" tsc=reliable");
        }
    }
    if !init.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(init);
    }
    cmdline.trim().to_owned()
}

/// Builds a machine booting `k` as `cfg` describes; input errors come before any KVM work.
pub(crate) fn build(
    cfg: MachineConfig,
    k: LinuxKernel,
    started: Instant,
) -> Result<Machine, VmmError> {
    let user = |e: cxlvm_boot::BootError| -> VmmError {
        if e.is_user_error() {
            ConfigError::Boot(e).into()
        } else {
            VmmError::Boot(e)
        }
    };
    cxlvm_boot::detect(&k.kernel).map_err(user)?;
    if let Some(i) = &k.initrd {
        crate::config::check_input_file(i).map_err(|source| ConfigError::InitrdUnreadable {
            path: i.display().to_string(),
            source,
        })?;
    }
    if cfg.memory < cxlvm_boot::layout::HIGH_MEMORY * 16 {
        return Err(ConfigError::LinuxMemory(cfg.memory).into());
    }

    let ram_ranges = layout::ram_ranges(cfg.memory);
    let mut reserved: Vec<(u64, u64)> = ram_ranges.iter().map(|&(g, s, _)| (g, s)).collect();
    reserved.push((IOAPIC_BASE, 0x1000));
    reserved.push((LAPIC_BASE, 0x1000));
    let mut cfg = cfg;
    let mut topo = cfg.cxl.take();
    let cxl_files = check_topology(&mut topo, &reserved)?;
    let serial_out = serial_writer(std::mem::replace(&mut cfg.serial, SerialOut::Null))?;

    // KVM, interrupt controllers, memory.
    let hv = Hypervisor::open(&cfg.kvm_path)?;
    let vm = hv.create_vm()?;
    vm.create_irqchip_and_pit()?;
    let ram = RamBacking::memfd("guest-ram", cfg.memory)?;
    let slots = Arc::new(SlotTable::default());
    let mut space = AddressSpace::new("system", layout::MAX_GPA);
    space.add_listener(Box::new(vm.slot_listener(slots.clone())))?;
    place_ram(&mut space, &ram, &ram_ranges)?;
    let view = space.view_handle();
    let space = Arc::new(Mutex::new(space));
    let stopper = Arc::new(Stopper::default());
    let cxl = build_cxl(
        topo.as_ref(),
        cxl_files,
        &space,
        LINUX_LAYOUT,
        &cfg,
        &stopper,
    )?;

    // Port I/O: COM1 on IRQ 4, the ACPI power registers, the CXL control ports.
    let irq = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::EventFd)?;
    vm.register_irqfd(&irq, COM1_GSI)?;
    let serial = Arc::new(Serial::with_irq(serial_out, SerialIrq::EventFd(irq)));
    let mut pio = PioBus::new();
    pio.insert("com1", ports::COM1, 8, serial.clone())?;
    let power = cxlvm_acpi::PowerRegisters::CXLVM;
    pio.insert(
        "acpi-sleep",
        power.sleep_control,
        acpi_sleep::LEN,
        Arc::new(AcpiSleep::new(stopper.clone(), cxlvm_acpi::S5_SLEEP_TYPE)),
    )?;
    pio.insert(
        "acpi-reset",
        power.reset,
        1,
        Arc::new(ResetRegister::new(stopper.clone(), power.reset_value)),
    )?;
    add_cxl_ports(&mut pio, cxl.as_ref())?;
    let pio = Arc::new(pio);

    // vCPUs (after the irqchip, so each gets an in-kernel LAPIC).
    let cpuid = hv.supported_cpuid()?;
    let mut vcpus = Vec::new();
    for i in 0..cfg.vcpus {
        vcpus.push(vm.create_vcpu(i)?);
    }

    // The kernel, its memory map and command line.
    let ecam = cxl.as_ref().map(|c| c.ecam);
    let map = memory_map(&ram_ranges, ecam);
    let file = ram.file().ok_or(VmmError::NoRamFile)?;
    let ranges: Vec<RamRange<'_>> = ram_ranges
        .iter()
        .map(|&(gpa, size, offset)| RamRange {
            gpa,
            size,
            file,
            offset,
        })
        .collect();
    let mem = cxlvm_boot::guest_memory(&ranges).map_err(user)?;
    let ram_list: Vec<(u64, u64)> = ram_ranges.iter().map(|&(g, s, _)| (g, s)).collect();
    let platform = crate::acpi::platform(cfg.vcpus, &ram_list, IOAPIC_BASE, cxl.as_ref())?;
    let acpi = crate::acpi::tables(&platform, ACPI_BASE)?;
    if acpi.blob().len() as u64 > ACPI_SIZE {
        return Err(VmmError::AcpiTooLarge {
            size: acpi.blob().len(),
            room: ACPI_SIZE,
        });
    }
    ram.write(ACPI_BASE, acpi.blob())?;
    if let Some(dir) = &cfg.dump_acpi {
        acpi.dump(dir).map_err(|source| ConfigError::DumpAcpi {
            path: dir.display().to_string(),
            source,
        })?;
    }
    let cmdline = kernel_cmdline(&cfg.cmdline, k.hypervisor_bit, vcpus[0].tsc_khz());
    let loaded = cxlvm_boot::load(
        &mem,
        &LinuxBoot {
            kernel: k.kernel.clone(),
            initrd: k.initrd.clone(),
            cmdline,
            memory_map: map,
            rsdp: Some(acpi.rsdp_address()),
        },
    )
    .map_err(user)?;
    drop(mem);
    info!(
        format = ?loaded.format,
        kernel = ?loaded.kernel,
        initrd = ?loaded.initrd,
        "kernel loaded"
    );
    for v in &vcpus {
        let entry = match (v.index(), loaded.entry) {
            (0, Entry::Pvh { rip, start_info }) => LinuxEntry::Pvh { rip, start_info },
            (0, Entry::Linux64 { rip, zero_page }) => LinuxEntry::Linux64 {
                rip,
                zero_page,
                pml4: cxlvm_boot::layout::PAGE_TABLES,
                gdt: cxlvm_boot::layout::GDT,
            },
            _ => LinuxEntry::WaitForSipi,
        };
        v.configure_linux(&cpuid, cfg.vcpus, k.hypervisor_bit, entry)?;
    }
    info!(
        vcpus = cfg.vcpus,
        memory_mib = cfg.memory >> 20,
        "Linux machine built in {:?}",
        started.elapsed()
    );
    Ok(Machine {
        space,
        view,
        vcpus,
        pio,
        stopper,
        boot_mark: Arc::default(),
        null: Arc::default(),
        scratch: None,
        slots,
        ram,
        started,
        timeout: cfg.timeout,
        cxl,
        dump_request: None,
        seccomp: cfg.seccomp,
        console_input: cfg.console_input.then_some(serial),
        emulation: Default::default(),
        _vm: vm,
    })
}

#[cfg(test)]
mod tests {
    use super::kernel_cmdline;

    #[test]
    fn the_tsc_frequency_is_stated_only_without_the_hypervisor_bit() {
        assert_eq!(
            kernel_cmdline("console=ttyS0", false, Some(2_400_000)),
            "console=ttyS0 tsc_early_khz=2400000 tsc=reliable"
        );
        assert_eq!(
            kernel_cmdline("console=ttyS0", true, Some(1)),
            "console=ttyS0"
        );
        assert_eq!(kernel_cmdline("", false, None), "");
        // Arguments after `--` belong to init: cxlvm's go before them.
        assert_eq!(
            kernel_cmdline("console=ttyS0 -- /init a--b", false, Some(3)),
            "console=ttyS0 tsc_early_khz=3 tsc=reliable -- /init a--b"
        );
        assert_eq!(
            kernel_cmdline("a--b x", false, Some(3)),
            "a--b x tsc_early_khz=3 tsc=reliable"
        );
        assert_eq!(
            kernel_cmdline("tsc_early_khz=5 tsc=unstable", false, Some(7)),
            "tsc_early_khz=5 tsc=unstable"
        );
    }
}
