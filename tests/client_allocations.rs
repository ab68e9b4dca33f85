//! The client's loss repair allocates nothing per packet: a player's NACK scheduling and RTX
//! restoring, a publisher's keeping of sent packets and its retransmissions, and the loss gate
//! run thousands of packets under a counting allocator after their set-up without one
//! allocation. (The reader task around them adds only SRTP in place and atomic counters.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use corecast::client::repair::{
    LossGate, NACK_BUFFER_LEN, PlayRepair, PublishRepair, RETRANSMISSION_BUFFER_LEN,
};
use corecast::wire::nack::write_nack;
use corecast::wire::rtx::{RtxStream, build_rtx};

/// Counts allocations made on a thread while it says it is measuring.
struct CountingAllocator;

thread_local! {
    /// Whether this thread is measuring, and what it counted: per thread, since tests run in
    /// parallel.
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    if MEASURING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCATIONS.try_with(|a| a.set(a.get() + 1));
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counting reads and
// writes const-initialised thread-locals, which never allocate.
#[allow(unsafe_code)] // a global allocator cannot be written without it
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's layout contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as for dealloc and alloc.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Runs `f` and returns how many allocations it made on this thread.
fn allocations_in(f: impl FnOnce()) -> u64 {
    ALLOCATIONS.with(|a| a.set(0));
    MEASURING.with(|m| m.set(true));
    f();
    MEASURING.with(|m| m.set(false));
    ALLOCATIONS.with(Cell::get)
}

fn write_rtp(out: &mut [u8], pt: u8, sequence: u16, ssrc: u32) -> usize {
    out[0] = 0x80;
    out[1] = pt;
    out[2..4].copy_from_slice(&sequence.to_be_bytes());
    out[4..8].copy_from_slice(&(u32::from(sequence) * 3000).to_be_bytes());
    out[8..12].copy_from_slice(&ssrc.to_be_bytes());
    out[12..1200].fill(sequence as u8);
    1200
}

#[test]
fn the_counter_sees_an_allocation() {
    assert_eq!(
        allocations_in(|| drop(std::hint::black_box(vec![0u8; 8]))),
        1
    );
}

#[test]
fn a_players_nacks_and_rtx_restores_allocate_nothing_per_packet() {
    let t0 = Instant::now();
    let mut repair = PlayRepair::new(96, Some(97), Some(0x1111), 0x3333);
    let mut gate = LossGate::new(3.0, 5);
    let mut packet = [0u8; 1500];
    let mut rtx = [0u8; 1500];
    let mut nack = [0u8; NACK_BUFFER_LEN];
    let mut delivered = 0u64;
    let mut run = |from: u16, to: u16| {
        for seq in from..to {
            let now = t0 + Duration::from_millis(u64::from(seq));
            let len = write_rtp(&mut packet, 96, seq, 0x1111);
            // Every lost packet comes back as RTX 5 packets later: a gap, a NACK, a repair.
            if !gate.drop_next() {
                delivered += u64::from(repair.on_rtp(now, &packet[..len]).is_some());
            }
            if seq >= 5 && seq % 7 == 0 {
                let len = write_rtp(&mut packet, 96, seq - 5, 0x1111);
                let stream = RtxStream {
                    ssrc: 0x2222,
                    payload_type: 97,
                    sequence: seq,
                };
                let n = build_rtx(&packet[..len], &stream, &mut rtx).unwrap();
                delivered += u64::from(repair.on_rtp(now, &rtx[..n]).is_some());
            }
            while repair.poll_nack(now, &mut nack).is_some() {}
        }
    };
    run(0, 1000); // warm-up: nothing grows on the steady path, but measure only after it
    let allocations = allocations_in(|| run(1000, 20_000));
    let c = *repair.counters();
    assert!(c.nacks_sent > 100 && c.repaired > 10, "{c:?}");
    assert!(delivered > 19_000);
    assert_eq!(allocations, 0, "allocations over 19 000 packets: {c:?}");
}

#[test]
fn a_publishers_kept_packets_and_retransmissions_allocate_nothing_per_packet() {
    let t0 = Instant::now();
    let mut repair =
        PublishRepair::new(0x1111, Some((97, 0x2222)), 0, 1024, Duration::from_secs(1));
    let mut packet = [0u8; 1500];
    let mut nack = [0u8; 256];
    let mut out = [0u8; RETRANSMISSION_BUFFER_LEN];
    let mut run = |from: u16, to: u16| {
        for seq in from..to {
            let now = t0 + Duration::from_millis(u64::from(seq));
            let len = write_rtp(&mut packet, 96, seq, 0x1111);
            repair.on_sent(now, &packet[..len]);
            if seq >= 20 && seq % 10 == 0 {
                let lost = [seq - 20, seq - 13, seq - 12, seq - 1];
                let (n, _) = write_nack(&mut nack, 0x4444, 0x1111, &lost).unwrap();
                repair.on_rtcp(now, &nack[..n]);
                while repair.next_retransmission(now, &mut out).is_some() {}
            }
        }
    };
    run(0, 1000);
    let allocations = allocations_in(|| run(1000, 20_000));
    let c = *repair.counters();
    assert!(c.retransmitted > 7_000, "{c:?}");
    assert_eq!(allocations, 0, "allocations over 19 000 packets: {c:?}");
}
