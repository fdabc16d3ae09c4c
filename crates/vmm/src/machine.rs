//! Building a machine: memory map, KVM slots, devices, boot structures and vCPUs.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use cxlvm_devices::{
    BootMark, ExitPort, NullDevice, PioBus, PioWindow, ScratchWindow, Serial, Stopper,
};
use cxlvm_kvm::{EntryState, Hypervisor, SlotTable, Vcpu};
use cxlvm_memory::{AddressSpace, FlatViewHandle, RamBacking};
use cxlvm_x86::bootinfo::{self, BootInfo, Device};
use cxlvm_x86::layout::{self, ports};
use cxlvm_x86::{cpu, elf, paging};
use tracing::{debug, info};

use crate::VmmError;
use std::sync::atomic::{AtomicU64, Ordering};

use cxlvm_cxl::topology::AddressLimits;
use cxlvm_devices::{PioDevice, StopReason};
use cxlvm_mapping::overlay::OverlayManager;
use cxlvm_mapping::window::WindowDispatcher;
use cxlvm_platform::{self as platform, CxlPlatform, OverlayOptions, PlatformLayout};

use crate::config::{ConfigError, MachineConfig, Privilege, SerialOut};

/// Where the CXL platform's fixed ranges go.
pub(crate) const CXL_LAYOUT: PlatformLayout = PlatformLayout {
    ecam_base: layout::ECAM_BASE,
    chbcr_base: layout::CHBCR_BASE,
    aperture_base: layout::PCI_APERTURE_BASE,
    aperture_size: layout::PCI_APERTURE_SIZE,
};

/// Overlay options: the VMA budget defaults to what `vm.max_map_count` leaves after what the
/// process uses now, minus a margin for everything else; failures stop the VM.
pub(crate) fn overlay_options(
    direct: bool,
    budget: Option<u64>,
    stopper: &Arc<Stopper>,
) -> OverlayOptions {
    let vma_budget = budget.unwrap_or_else(|| {
        let limit = cxlvm_stitch::vma_limit().unwrap_or(65530);
        let used = cxlvm_stitch::vmas_in_use().unwrap_or(1000);
        limit.saturating_sub(used).saturating_sub(4096)
    });
    let s = stopper.clone();
    OverlayOptions {
        vma_budget,
        direct,
        fatal: Box::new(move |e| {
            s.request(StopReason::Fatal(cxlvm_devices::DeviceFailure::new(
                "CXL overlays",
                e,
            )))
        }),
    }
}

/// Port 0x510: CXL direct-mapping control.
pub(crate) struct CxlControl {
    pub(crate) overlays: Arc<OverlayManager>,
    pub(crate) dispatchers: Vec<Arc<WindowDispatcher>>,
    pub(crate) baseline: AtomicU64,
}

impl CxlControl {
    fn exits(&self) -> u64 {
        self.dispatchers.iter().map(|d| d.accesses()).sum()
    }
}

impl PioDevice for CxlControl {
    fn read(&self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = u8::from(self.overlays.direct());
        }
    }
    fn write(&self, offset: u16, data: &[u8]) {
        if offset == 0 {
            self.overlays
                .set_direct(data.first().is_some_and(|b| b & 1 == 1));
        }
    }
}

/// Port 0x514: MMIO accesses served by the CXL window dispatchers (exits), resettable.
pub(crate) struct CxlExits(pub(crate) Arc<CxlControl>);

impl PioDevice for CxlExits {
    fn read(&self, _offset: u16, data: &mut [u8]) {
        let v = self
            .0
            .exits()
            .wrapping_sub(self.0.baseline.load(Ordering::Relaxed)) as u32;
        let b = v.to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = b.get(i).copied().unwrap_or(0);
        }
    }
    fn write(&self, _offset: u16, _data: &[u8]) {
        self.0.baseline.store(self.0.exits(), Ordering::Relaxed);
    }
}

/// Validates the topology against the machine's own ranges (`reserved`: RAM, devices) and opens
/// its device files: every user error of the CXL configuration, before anything starts.
pub(crate) fn check_topology(
    topo: &mut Option<cxlvm_cxl::topology::Topology>,
    reserved: &[(u64, u64)],
) -> Result<Option<Vec<platform::DeviceFiles>>, VmmError> {
    let Some(t) = topo.as_mut() else {
        return Ok(None);
    };
    let limits = AddressLimits {
        reserved: reserved
            .iter()
            .map(|&(b, s)| (b, b + s, format!("platform range [{b:#x}, {:#x})", b + s)))
            .collect(),
        window_min: layout::CXL_WINDOW_MIN,
        window_max: layout::CXL_WINDOW_MAX,
    };
    t.validate(&limits).map_err(ConfigError::Topology)?;
    Ok(Some(
        CxlPlatform::open_files(t).map_err(ConfigError::Platform)?,
    ))
}

/// Places guest RAM (`(gpa, size, offset in ram)` ranges) in the address space.
pub(crate) fn place_ram(
    space: &mut AddressSpace,
    ram: &Arc<RamBacking>,
    ranges: &[(u64, u64, u64)],
) -> Result<(), VmmError> {
    let root = space.root();
    let mut tx = space.begin();
    for (i, &(gpa, size, off)) in ranges.iter().enumerate() {
        let r = tx.add_ram(
            if i == 0 { "ram-low" } else { "ram-high" },
            ram.clone(),
            off,
            size,
            false,
        )?;
        tx.place(root, r, gpa, 0)?;
    }
    tx.commit()?;
    Ok(())
}

/// Builds the CXL platform of a checked topology into `space` (user errors stay user errors).
pub(crate) fn build_cxl(
    topo: Option<&cxlvm_cxl::topology::Topology>,
    files: Option<Vec<platform::DeviceFiles>>,
    space: &Arc<Mutex<AddressSpace>>,
    layout: PlatformLayout,
    cfg: &MachineConfig,
    stopper: &Arc<Stopper>,
) -> Result<Option<CxlPlatform>, VmmError> {
    let (Some(t), Some(files)) = (topo, files) else {
        return Ok(None);
    };
    CxlPlatform::build(
        t,
        files,
        space,
        layout,
        overlay_options(cfg.cxl_direct, cfg.vma_budget, stopper),
    )
    .map(Some)
    .map_err(|e| {
        if e.is_user_error() {
            VmmError::Config(ConfigError::Platform(e))
        } else {
            VmmError::Platform(e)
        }
    })
}

/// Registers the CXL control ports (0x510 direct mapping, 0x514 exit counter).
pub(crate) fn add_cxl_ports(pio: &mut PioBus, cxl: Option<&CxlPlatform>) -> Result<(), VmmError> {
    if let Some(c) = cxl {
        let ctl = Arc::new(CxlControl {
            overlays: c.overlays.clone(),
            dispatchers: c.dispatchers.clone(),
            baseline: AtomicU64::new(0),
        });
        pio.insert("cxl-direct", ports::CXL_DIRECT, 4, ctl.clone())?;
        pio.insert("cxl-exits", ports::CXL_EXITS, 4, Arc::new(CxlExits(ctl)))?;
    }
    Ok(())
}

/// Adds the CXL platform's entries (docs/guest-abi.md kinds 4-8) to the boot info device table.
fn cxl_boot_devices(c: &CxlPlatform, devices: &mut Vec<Device>) {
    let (ecam, ecam_size) = c.ecam;
    devices.push(Device {
        kind: bootinfo::dev_kind::ECAM,
        flags: ((ecam_size >> 20).saturating_sub(1) as u32) << 8,
        base: ecam,
        size: ecam_size,
        port: 0,
    });
    for h in &c.host_bridges {
        devices.push(Device {
            kind: bootinfo::dev_kind::CXL_HOST_BRIDGE,
            flags: h.uid,
            base: h.chbcr,
            size: platform::COMPONENT_SIZE,
            port: u64::from(h.root_bus)
                | u64::from(h.root_ports) << 8
                | u64::from(h.passthrough) << 16,
        });
    }
    for w in &c.windows {
        let uids = |r: std::ops::Range<usize>| {
            w.target_uids
                .get(r)
                .unwrap_or(&[])
                .iter()
                .enumerate()
                .fold(0u64, |acc, (i, &u)| acc | u64::from(u as u8) << (8 * i))
        };
        devices.push(Device {
            kind: bootinfo::dev_kind::CXL_WINDOW,
            flags: u32::from(w.ways_enc)
                | u32::from(w.gran_enc) << 4
                | u32::from(w.arithmetic) << 8
                | (w.target_uids.len() as u32) << 16,
            base: w.base,
            size: w.size,
            port: uids(0..w.target_uids.len().min(8)),
        });
        if w.target_uids.len() > 8 {
            devices.push(Device {
                kind: bootinfo::dev_kind::CXL_WINDOW_TARGETS,
                flags: 0,
                base: w.base,
                size: w.size,
                port: uids(8..w.target_uids.len()),
            });
        }
    }
    devices.push(Device {
        kind: bootinfo::dev_kind::PCI_APERTURE,
        flags: 0,
        base: c.aperture.0,
        size: c.aperture.1,
        port: 0,
    });
}

/// The test-guest machine's ACPI tables at [`layout::ACPI_TABLES`]: the platform a Linux machine
/// with the same vCPUs, RAM and CXL platform would get (the I/O APIC described at its PC address
/// although test guests have no interrupt controllers), written to `--dump-acpi` if asked.
fn acpi_tables(
    vcpus: u32,
    ram_ranges: &[(u64, u64, u64)],
    cxl: Option<&CxlPlatform>,
    dump: Option<&std::path::Path>,
) -> Result<cxlvm_acpi::AcpiTables, VmmError> {
    let ram: Vec<(u64, u64)> = ram_ranges.iter().map(|&(g, s, _)| (g, s)).collect();
    let platform = crate::acpi::platform(vcpus, &ram, crate::linux::IOAPIC_BASE, cxl)?;
    let acpi = crate::acpi::tables(&platform, layout::ACPI_TABLES)?;
    let room = layout::IMAGE_MIN - layout::ACPI_TABLES;
    if acpi.blob().len() as u64 > room {
        return Err(VmmError::AcpiTooLarge {
            size: acpi.blob().len(),
            room,
        });
    }
    if let Some(dir) = dump {
        acpi.dump(dir).map_err(|source| ConfigError::DumpAcpi {
            path: dir.display().to_string(),
            source,
        })?;
    }
    Ok(acpi)
}

/// A built machine, ready to run.
pub struct Machine {
    pub(crate) space: Arc<Mutex<AddressSpace>>,
    pub(crate) view: FlatViewHandle,
    pub(crate) vcpus: Vec<Vcpu>,
    pub(crate) pio: Arc<PioBus>,
    pub(crate) boot_mark: Arc<BootMark>,
    pub(crate) stopper: Arc<Stopper>,
    pub(crate) null: Arc<NullDevice>,
    pub(crate) scratch: Option<Arc<ScratchWindow>>,
    pub(crate) slots: Arc<SlotTable>,
    pub(crate) ram: Arc<RamBacking>,
    pub(crate) started: Instant,
    pub(crate) timeout: Option<std::time::Duration>,
    pub(crate) cxl: Option<CxlPlatform>,
    pub(crate) dump_request: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Confine the run's threads with seccomp filters.
    pub(crate) seccomp: bool,
    /// The UART fed from cxlvm's stdin during the run (Linux guests, when asked).
    pub(crate) console_input: Option<Arc<Serial>>,
    /// Instructions completed for KVM's emulator (shared with the vCPU threads while running).
    pub(crate) emulation: Arc<Mutex<crate::EmulationStats>>,
    // Keeps the VM alive as long as the machine.
    pub(crate) _vm: cxlvm_kvm::Vm,
}

pub(crate) fn serial_writer(out: SerialOut) -> Result<Box<dyn std::io::Write + Send>, ConfigError> {
    Ok(match out {
        SerialOut::Stdout => Box::new(std::io::stdout()),
        SerialOut::File(p) => {
            Box::new(
                std::fs::File::create(&p).map_err(|source| ConfigError::SerialFile {
                    path: p.display().to_string(),
                    source,
                })?,
            )
        }
        SerialOut::Writer(w) => w,
        SerialOut::Null => Box::new(std::io::sink()),
    })
}

impl Machine {
    /// Checks `cfg`, then creates the VM with everything in place. Input errors come before any
    /// KVM work, so a bad command line starts nothing.
    pub fn build(mut cfg: MachineConfig) -> Result<Self, VmmError> {
        let started = cfg.started.unwrap_or_else(Instant::now);
        cfg.check()?;
        let guest = match &cfg.boot {
            crate::config::Boot::TestGuest(g) => g.clone(),
            crate::config::Boot::Linux(k) => {
                let k = k.clone();
                return crate::linux::build(cfg, k, started);
            }
        };
        let path = guest.display().to_string();
        let file = crate::config::read_input_file(&guest).map_err(|source| {
            ConfigError::GuestUnreadable {
                path: path.clone(),
                source,
            }
        })?;
        let image = elf::parse(&file).map_err(|source| ConfigError::GuestInvalid {
            path: path.clone(),
            source,
        })?;

        // Guest-physical plan.
        let ram_ranges = layout::ram_ranges(cfg.memory);
        let low_end = ram_ranges[0].1;
        let mut mapped: Vec<(u64, u64)> = ram_ranges.iter().map(|&(g, s, _)| (g, s)).collect();
        mapped.push((layout::NULL_MMIO_BASE, layout::NULL_MMIO_SIZE));
        mapped.push((layout::PIO_WINDOW_BASE, layout::PIO_WINDOW_SIZE));
        if let Some(s) = cfg.scratch_window {
            mapped.push((layout::SCRATCH_WINDOW_BASE, s));
        }
        let mut topo = cfg.cxl.take();
        let cxl_files = check_topology(&mut topo, &mapped)?;
        if let Some(t) = &topo {
            mapped.extend(platform::planned_ranges(t, &CXL_LAYOUT));
        }
        let pt_plan = paging::Plan::new(&mapped)?;
        let pt_size = pt_plan.size();
        let top = layout::top_of_ram(low_end, pt_size, cfg.vcpus, layout::STACK_SIZE);
        let stacks = layout::STACK_SIZE * u64::from(cfg.vcpus);
        if pt_size
            .saturating_add(stacks)
            .saturating_add(layout::IMAGE_MIN)
            > low_end
        {
            return Err(ConfigError::PageTablesDoNotFit {
                pt_mib: pt_size.div_ceil(1 << 20),
                vcpus: cfg.vcpus,
                low_mib: low_end >> 20,
            }
            .into());
        }
        let fits = |t: &layout::TopOfRam| {
            image.start() >= layout::IMAGE_MIN && image.end() <= t.stacks_bottom
        };
        let top = match top {
            Some(t) if fits(&t) => t,
            _ => {
                return Err(ConfigError::GuestDoesNotFit {
                    path,
                    start: image.start(),
                    end: image.end(),
                    min: layout::IMAGE_MIN,
                    max: top.map_or(layout::IMAGE_MIN, |t| t.stacks_bottom),
                    memory_mib: cfg.memory >> 20,
                }
                .into());
            }
        };
        let serial = serial_writer(std::mem::replace(&mut cfg.serial, SerialOut::Null))?;

        // KVM and memory.
        let hv = Hypervisor::open(&cfg.kvm_path)?;
        let vm = hv.create_vm()?;
        let ram = RamBacking::memfd("guest-ram", cfg.memory)?;
        let slots = Arc::new(SlotTable::default());
        let mut space = AddressSpace::new("system", layout::MAX_GPA);
        space.add_listener(Box::new(vm.slot_listener(slots.clone())))?;
        let null = Arc::new(NullDevice::default());
        {
            let root = space.root();
            let mut tx = space.begin();
            for (i, &(gpa, size, off)) in ram_ranges.iter().enumerate() {
                let r = tx.add_ram(
                    if i == 0 { "ram-low" } else { "ram-high" },
                    ram.clone(),
                    off,
                    size,
                    false,
                )?;
                tx.place(root, r, gpa, 0)?;
            }
            let n = tx.add_mmio("null-mmio", layout::NULL_MMIO_SIZE, null.clone())?;
            tx.place(root, n, layout::NULL_MMIO_BASE, 0)?;
            tx.commit()?;
        }
        let view = space.view_handle();
        let space = Arc::new(Mutex::new(space));
        let stopper = Arc::new(Stopper::default());
        let scratch = match cfg.scratch_window {
            Some(size) => Some(ScratchWindow::install(
                &space,
                layout::SCRATCH_WINDOW_BASE,
                size,
                stopper.clone(),
            )?),
            None => None,
        };

        let cxl = build_cxl(topo.as_ref(), cxl_files, &space, CXL_LAYOUT, &cfg, &stopper)?;

        // Port I/O.
        let boot_mark = Arc::new(BootMark::default());
        let mut pio = PioBus::new();
        pio.insert("com1", ports::COM1, 8, Arc::new(Serial::new(serial)))?;
        pio.insert("exit", ports::EXIT, 4, Arc::new(ExitPort(stopper.clone())))?;
        pio.insert("boot-mark", ports::BOOT_MARK, 4, boot_mark.clone())?;
        pio.insert("null", ports::NULL, 4, null.clone())?;
        if let Some(s) = &scratch {
            pio.insert("scratch-control", ports::SCRATCH_CONTROL, 4, s.clone())?;
        }
        add_cxl_ports(&mut pio, cxl.as_ref())?;
        let pio = Arc::new(pio);
        {
            let mut sp = space.lock().unwrap_or_else(|e| e.into_inner());
            let root = sp.root();
            let mut tx = sp.begin();
            let w = tx.add_mmio(
                "pio-window",
                layout::PIO_WINDOW_SIZE,
                Arc::new(PioWindow(pio.clone())),
            )?;
            tx.place(root, w, layout::PIO_WINDOW_BASE, 0)?;
            tx.commit()?;
        }

        // vCPUs.
        let cpuid = hv.supported_cpuid()?;
        let mut vcpus = Vec::new();
        for i in 0..cfg.vcpus {
            vcpus.push(vm.create_vcpu(i)?);
        }
        let tsc_khz = vcpus[0].tsc_khz().map_or(0, u64::from);

        // Boot structures.
        let mut devices = vec![
            Device {
                kind: bootinfo::dev_kind::NULL_MMIO,
                flags: 0,
                base: layout::NULL_MMIO_BASE,
                size: layout::NULL_MMIO_SIZE,
                port: 0,
            },
            Device {
                kind: bootinfo::dev_kind::PIO_WINDOW,
                flags: 0,
                base: layout::PIO_WINDOW_BASE,
                size: layout::PIO_WINDOW_SIZE,
                port: 0,
            },
        ];
        if let Some(s) = &scratch {
            devices.push(Device {
                kind: bootinfo::dev_kind::SCRATCH_WINDOW,
                flags: 0,
                base: s.base(),
                size: s.size(),
                port: u64::from(ports::SCRATCH_CONTROL),
            });
        }
        if let Some(c) = &cxl {
            cxl_boot_devices(c, &mut devices);
        }
        let acpi = acpi_tables(
            cfg.vcpus,
            &ram_ranges,
            cxl.as_ref(),
            cfg.dump_acpi.as_deref(),
        )?;
        devices.push(Device {
            kind: bootinfo::dev_kind::ACPI_TABLES,
            flags: 0,
            base: acpi.rsdp_address(),
            size: acpi.blob().len() as u64,
            port: 0,
        });
        let mut mem_map: Vec<(u64, u64, u32)> = ram_ranges
            .iter()
            .map(|&(g, s, _)| (g, s, bootinfo::mem_kind::RAM))
            .collect();
        mem_map.push((0, layout::ACPI_TABLES, bootinfo::mem_kind::RESERVED));
        mem_map.push((
            layout::ACPI_TABLES,
            layout::IMAGE_MIN - layout::ACPI_TABLES,
            bootinfo::mem_kind::ACPI,
        ));
        mem_map.push((
            top.stacks_bottom,
            low_end - top.stacks_bottom,
            bootinfo::mem_kind::RESERVED,
        ));
        let free_start = image.end().next_multiple_of(4096);
        let bi = BootInfo {
            vcpu_count: cfg.vcpus,
            tsc_khz,
            ram_size: cfg.memory,
            free_start,
            free_end: top.stacks_bottom,
            stack_top: top.stack_top,
            stack_size: layout::STACK_SIZE,
            mem_map,
            devices,
            cmdline: cfg.cmdline.clone(),
        }
        .to_bytes();
        let room = layout::BOOT_INFO_MAX - layout::BOOT_INFO;
        if bi.len() as u64 > room {
            return Err(VmmError::BootInfoTooLarge {
                size: bi.len(),
                room,
            });
        }
        ram.write(layout::BOOT_INFO, &bi)?;
        ram.write(layout::ACPI_TABLES, acpi.blob())?;
        ram.write(layout::GDT, &cpu::gdt())?;
        let pt = pt_plan.build(top.page_tables);
        ram.write(top.page_tables, &pt.bytes)?;
        for s in &image.segments {
            let bytes = &file[s.file_offset as usize..(s.file_offset + s.file_size) as usize];
            ram.write(s.paddr, bytes)?;
        }
        debug!(entry = image.entry, end = image.end(), "guest image loaded");

        for v in &vcpus {
            let idx = u64::from(v.index());
            v.configure(&EntryState {
                entry: image.entry,
                boot_info: layout::BOOT_INFO,
                stack_top: top.stack_top - idx * layout::STACK_SIZE,
                cr3: pt.base,
                cpuid: cpuid.clone(),
                cpl0: cfg.privilege == Privilege::Kernel,
            })?;
        }
        info!(
            vcpus = cfg.vcpus,
            memory_mib = cfg.memory >> 20,
            "machine built in {:?}",
            started.elapsed()
        );
        Ok(Self {
            space,
            view,
            vcpus,
            pio,
            stopper,
            boot_mark,
            null,
            scratch,
            slots,
            ram,
            started,
            timeout: cfg.timeout,
            cxl,
            dump_request: None,
            seccomp: cfg.seccomp,
            console_input: None,
            emulation: Arc::default(),
            _vm: vm,
        })
    }

    /// The scratch window, when configured.
    pub fn scratch(&self) -> Option<&Arc<ScratchWindow>> {
        self.scratch.as_ref()
    }

    /// The installed KVM slots.
    pub fn slots(&self) -> &Arc<SlotTable> {
        &self.slots
    }

    /// Guest RAM backing.
    pub fn ram(&self) -> &Arc<RamBacking> {
        &self.ram
    }

    /// The current flat view (lock-free handle).
    pub fn view(&self) -> &FlatViewHandle {
        &self.view
    }

    /// The address space (for dumps and tests).
    pub fn space(&self) -> &Arc<Mutex<AddressSpace>> {
        &self.space
    }

    /// The CXL platform, when configured.
    pub fn cxl(&self) -> Option<&CxlPlatform> {
        self.cxl.as_ref()
    }

    /// A snapshot of the memory state (flat view, KVM slots, CXL windows and their ranges).
    pub fn memory_state(&self) -> crate::MemoryState {
        let (tree, view) = {
            let sp = self.space.lock().unwrap_or_else(|e| e.into_inner());
            (sp.dump(), sp.view())
        };
        let flat_view = view
            .ranges()
            .iter()
            .map(|r| crate::ViewRange {
                start: r.start,
                end: r.end(),
                name: r.name.to_string(),
                kind: if r.is_ram() { "ram" } else { "mmio" },
            })
            .collect();
        let slots = self
            .slots
            .snapshot()
            .into_iter()
            .map(|s| (s.slot, s.start, s.len, s.backing))
            .collect();
        let windows = self.cxl.as_ref().map_or_else(Vec::new, |c| {
            let ranges = c.overlays.ranges();
            c.windows
                .iter()
                .enumerate()
                .map(|(i, w)| crate::WindowState {
                    index: i,
                    base: w.base,
                    size: w.size,
                    exits: c.dispatchers[i].accesses(),
                    unclaimed: c.dispatchers[i].unclaimed(),
                    ranges: ranges.iter().filter(|r| r.window == i).cloned().collect(),
                })
                .collect()
        });
        crate::MemoryState {
            flat_view,
            windows,
            emulation: self
                .emulation
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            slots,
            tree,
        }
    }

    /// Asks `run` to print [`Machine::memory_state`] on stderr whenever `flag` becomes true (it is
    /// reset after each dump); the binary sets it from SIGUSR1.
    pub fn set_dump_request(&mut self, flag: Arc<std::sync::atomic::AtomicBool>) {
        self.dump_request = Some(flag);
    }

    /// The null device (exit-floor counter).
    pub fn null_device(&self) -> &Arc<NullDevice> {
        &self.null
    }
}
