//! Bandwidth of node-0 memory against CXL-node memory in one run, and the XSAVEC + AVX loop on
//! CXL-node memory. Safe code over the buffers and loops of [`crate::sys`].

use std::time::Instant;

use serde::Serialize;

use crate::sys::{self, NodeBuffer, XSAVE_AREA};

/// Bandwidth of each operation on one node, MB/s (10^6 bytes per second): the median of the
/// passes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeBandwidth {
    pub node: u32,
    pub buffer_bytes: usize,
    /// `mov qword` stores over the whole buffer.
    pub store8_mbps: f64,
    /// `vmovdqa ymm` stores over the whole buffer; `None` without AVX.
    pub avx32_mbps: Option<f64>,
    /// `memcpy` of the first half into the second half, counting the bytes copied.
    pub memcpy_mbps: f64,
    /// Where sampled pages of the buffer are (`move_pages`); `None` if the kernel cannot say
    /// (no CONFIG_MIGRATION).
    pub pages: Option<Placement>,
}

/// How many of the sampled pages are on the node the buffer is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Placement {
    pub on_node: usize,
    pub sampled: usize,
}

/// CXL node / node 0 for each operation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ratio {
    pub store8: f64,
    pub avx32: Option<f64>,
    pub memcpy: f64,
}

/// Both nodes, measured with interleaved passes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bandwidth {
    pub unit: &'static str,
    pub passes: usize,
    pub node0: NodeBandwidth,
    pub cxl: NodeBandwidth,
    pub ratio_cxl_over_node0: Ratio,
}

/// The XSAVEC + AVX loop's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct XsavecLoop {
    pub node: u32,
    /// False when the CPU or kernel lacks XSAVEC or AVX (nothing ran).
    pub ran: bool,
    pub iterations: usize,
    /// Bytes checked: the AVX stores, the XSAVEC image of xmm/ymm0-3 and the XRSTORed values.
    pub bytes_checked: u64,
    pub mismatches: u64,
    /// The first mismatch, described.
    pub first_mismatch: Option<String>,
}

/// The median of `v` (sorted in place); 0 for an empty slice.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn mbps(bytes: usize, start: Instant) -> f64 {
    let s = start.elapsed().as_secs_f64().max(1e-9);
    bytes as f64 / s / 1e6
}

struct Samples {
    store8: Vec<f64>,
    avx32: Vec<f64>,
    memcpy: Vec<f64>,
}

fn one_pass(buf: &mut NodeBuffer, pass: usize, s: &mut Samples) {
    let data = buf.as_mut_slice();
    let len = data.len();
    let t = Instant::now();
    sys::store8(data, 0x0123_4567_89ab_cdef ^ pass as u64);
    s.store8.push(mbps(len, t));
    let mut pattern = [0u8; 32];
    for (i, b) in pattern.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37).wrapping_add(pass as u8);
    }
    let t = Instant::now();
    if sys::store32_avx(data, &pattern) {
        s.avx32.push(mbps(len, t));
    }
    let (a, b) = data.split_at_mut(len / 2);
    let t = Instant::now();
    b.copy_from_slice(a);
    s.memcpy.push(mbps(len / 2, t));
    std::hint::black_box(&b[b.len() - 1]);
}

fn summarize(buf: &NodeBuffer, s: &mut Samples) -> NodeBandwidth {
    let pages = buf.page_nodes(64).ok().map(|st| Placement {
        on_node: st.iter().filter(|n| **n == buf.node() as i32).count(),
        sampled: st.len(),
    });
    NodeBandwidth {
        node: buf.node(),
        buffer_bytes: buf.len(),
        store8_mbps: median(&mut s.store8),
        avx32_mbps: (!s.avx32.is_empty()).then(|| median(&mut s.avx32)),
        memcpy_mbps: median(&mut s.memcpy),
        pages,
    }
}

/// Maps `len` bytes on node 0 and on `cxl_node`, faults them in, and runs `passes` passes of
/// each operation, alternating nodes within a pass.
pub fn bandwidth(cxl_node: u32, len: usize, passes: usize) -> std::io::Result<Bandwidth> {
    let mut n0 = NodeBuffer::new(len, 0)?;
    let mut cx = NodeBuffer::new(len, cxl_node)?;
    // First touch: the pages are allocated on their nodes here, not during a timed pass.
    n0.as_mut_slice().fill(1);
    cx.as_mut_slice().fill(1);
    let new = || Samples {
        store8: Vec::new(),
        avx32: Vec::new(),
        memcpy: Vec::new(),
    };
    let (mut s0, mut s1) = (new(), new());
    for pass in 0..passes.max(1) {
        one_pass(&mut n0, pass, &mut s0);
        one_pass(&mut cx, pass, &mut s1);
    }
    let node0 = summarize(&n0, &mut s0);
    let cxl = summarize(&cx, &mut s1);
    let ratio = Ratio {
        store8: cxl.store8_mbps / node0.store8_mbps.max(f64::MIN_POSITIVE),
        avx32: match (cxl.avx32_mbps, node0.avx32_mbps) {
            (Some(c), Some(n)) => Some(c / n.max(f64::MIN_POSITIVE)),
            _ => None,
        },
        memcpy: cxl.memcpy_mbps / node0.memcpy_mbps.max(f64::MIN_POSITIVE),
    };
    Ok(Bandwidth {
        unit: "MB/s (10^6 bytes/s; memcpy counts bytes copied)",
        passes: passes.max(1),
        node0,
        cxl,
        ratio_cxl_over_node0: ratio,
    })
}

/// Bytes per round of the XSAVEC loop (a 64-byte aligned slot: pattern, AVX copy, XSAVE area,
/// restored copy).
const SLOT: usize = 384 + XSAVE_AREA;

/// The pattern of round `i`: 128 bytes, different in every byte position and round.
fn pattern(i: usize, out: &mut [u8]) {
    let mut x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for b in out.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Checks one round's bytes; returns (bytes checked, mismatches, first mismatch).
fn check_round(i: usize, slot: &[u8]) -> (u64, u64, Option<String>) {
    let want = &slot[..128];
    let mut bad = 0u64;
    let mut first = None;
    let mut cmp = |what: &str, got: &[u8], exp: &[u8]| {
        for (k, (g, e)) in got.iter().zip(exp).enumerate() {
            if g != e {
                bad += 1;
                if first.is_none() {
                    first = Some(format!(
                        "round {i}: {what} byte {k}: got {g:#04x}, expected {e:#04x}"
                    ));
                }
            }
        }
    };
    // The AVX stores and the values XRSTOR brought back.
    cmp("AVX store", &slot[128..256], want);
    cmp(
        "after XRSTOR",
        &slot[256 + XSAVE_AREA..256 + XSAVE_AREA + 128],
        want,
    );
    // The XSAVEC image (compacted): XMM0-3 at 160, the AVX component (YMM0-3 upper halves) at
    // 576, the first extended component right after the 64-byte header.
    let area = &slot[256..256 + XSAVE_AREA];
    for r in 0..4 {
        cmp(
            &format!("XSAVEC xmm{r}"),
            &area[160 + 16 * r..176 + 16 * r],
            &want[32 * r..32 * r + 16],
        );
        cmp(
            &format!("XSAVEC ymm{r}_hi"),
            &area[576 + 16 * r..592 + 16 * r],
            &want[32 * r + 16..32 * r + 32],
        );
    }
    (3 * 128, bad, first)
}

/// Runs `iterations` XSAVEC/AVX rounds on a buffer of `len` bytes bound to `node`, each round
/// at another place in the buffer, and checks every byte.
pub fn xsavec_loop(node: u32, len: usize, iterations: usize) -> std::io::Result<XsavecLoop> {
    let mut result = XsavecLoop {
        node,
        ran: false,
        iterations: 0,
        bytes_checked: 0,
        mismatches: 0,
        first_mismatch: None,
    };
    if !sys::has_xsavec() {
        return Ok(result);
    }
    let mut buf = NodeBuffer::new(len, node)?;
    let data = buf.as_mut_slice();
    let slots = data.len() / SLOT.next_multiple_of(64);
    if slots == 0 {
        return Ok(result);
    }
    // Walk the slots with a stride coprime to their count, so rounds land all over the buffer.
    let mut stride = (slots / 3).max(1);
    while gcd(stride, slots) != 1 {
        stride += 1;
    }
    for i in 0..iterations {
        let at = (i * stride % slots) * SLOT.next_multiple_of(64);
        let slot = &mut data[at..at + SLOT];
        pattern(i, &mut slot[..128]);
        if !sys::xsavec_round(slot) {
            return Ok(result);
        }
        let (n, bad, first) = check_round(i, slot);
        result.bytes_checked += n;
        result.mismatches += bad;
        if result.first_mismatch.is_none() {
            result.first_mismatch = first;
        }
        result.iterations += 1;
    }
    result.ran = true;
    Ok(result)
}
