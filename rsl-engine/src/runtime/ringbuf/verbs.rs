//! The RDMA verbs implementation of the remote-memory traits (cargo feature `rdma`): a ring's
//! memory registered with the NIC, a reliable-connected queue pair per ring, records written
//! with one-sided RDMA WRITE, the doorbell and the credit word as 8-byte inline WRITEs on the same
//! queue pair (so the reader never sees a tail before the record it covers). The connection is
//! set up by exchanging [`Endpoint`]s over the peer's TCP connection. Each session has a
//! protection domain of its own ([`Domain`]), so the remote keys a peer learns reach its own
//! session's memory and nothing else, and no call here waits on the NIC
//! ([`QueuePair::free_slots`]).
//!
//! Compiled in CI; it has not run on RDMA hardware or soft-RoCE here (docs/rdma.md says what
//! was and was not verified).

#![allow(unsafe_code)]

use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rdma_sys::*;

use super::{check_capacity, region_bytes, LocalMemory, RemoteMemory, CREDIT_WORD, DATA_WORD, DOORBELL_WORD, MAX_WRITES_PER_SEND};

/// The port every queue pair uses (the first; a multi-port NIC is configured outside).
const PORT: u8 = 1;
/// The GID index (0: the port's default GID; RoCE v2 deployments may need another).
const GID_INDEX: u8 = 0;
/// Send queue depth. Writes are unsignalled except every [`SIGNAL_EVERY`]th, whose completion
/// frees the queue slots of those before it.
const SEND_DEPTH: u32 = 256;
/// Every this many writes one is signalled (see [`SendSlots`]).
const SIGNAL_EVERY: u32 = 64;
/// Signalled writes in flight at most: the completions one poll may find.
const MAX_SIGNALLED: usize = (SEND_DEPTH / SIGNAL_EVERY) as usize;
/// Completion queue depth: room for a completion per send-queue slot, because a queue pair in
/// the error state flushes every outstanding request, unsignalled ones too, and an overrun
/// completion queue would hide the first error behind a queue error.
const CQ_DEPTH: i32 = SEND_DEPTH as i32 + 1;

/// Why a verbs call failed: names the call and carries errno (or the completion status).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerbsError {
    /// No RDMA device is present (the transport then keeps TCP).
    #[error("no RDMA device")]
    NoDevice,
    /// A verbs or RDMA CM call failed.
    #[error("{call} failed: errno {errno}")]
    Call {
        /// The call's name.
        call: &'static str,
        /// Its errno.
        errno: i32,
    },
    /// A posted work request completed in error: the queue pair is unusable.
    #[error("a work request completed with status {status} (vendor error {vendor})")]
    Completion {
        /// The completion's `ibv_wc_status`.
        status: u32,
        /// The device vendor's error code.
        vendor: u32,
    },
    /// The peer's endpoint is malformed or does not fit the ring (what is wrong).
    #[error("peer endpoint: {0}")]
    BadEndpoint(&'static str),
    /// A write was posted with no free send-queue slot (the caller did not check for room).
    #[error("the send queue is full")]
    SendQueueFull,
}

fn call_failed(call: &'static str) -> VerbsError {
    VerbsError::Call { call, errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0) }
}

fn check(call: &'static str, rc: i32) -> Result<(), VerbsError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(VerbsError::Call { call, errno: rc })
    }
}

/// An opened device and this port's addressing. Protection domains are per session
/// ([`Domain`]), never the device's.
#[derive(Debug)]
pub struct Device {
    ctx: NonNull<ibv_context>,
    lid: u16,
    gid: [u8; 16],
}

// SAFETY: libibverbs objects may be used from any thread (the library locks internally); the
// pointers are owned by this value and freed once, in `drop`.
unsafe impl Send for Device {}
// SAFETY: as above; `&Device` only reads the pointers.
unsafe impl Sync for Device {}

impl Device {
    /// Opens the first RDMA device (NoDevice if there is none: the caller speaks TCP).
    pub fn open_first() -> Result<Arc<Device>, VerbsError> {
        let mut n = 0;
        // SAFETY: the list is freed below; the device pointer is only used before that, and
        // ibv_open_device keeps what it needs.
        let ctx = unsafe {
            let list = ibv_get_device_list(&mut n);
            if list.is_null() {
                return Err(call_failed("ibv_get_device_list"));
            }
            let ctx = if n > 0 { ibv_open_device(*list) } else { ptr::null_mut() };
            ibv_free_device_list(list);
            if n == 0 {
                return Err(VerbsError::NoDevice);
            }
            NonNull::new(ctx).ok_or_else(|| call_failed("ibv_open_device"))?
        };
        // From here `dev` owns the context: a failed query closes it in `drop`.
        let mut dev = Device { ctx, lid: 0, gid: [0; 16] };
        // SAFETY: zeroed C structs are valid inputs; the calls fill them; the context is open.
        unsafe {
            let mut port: ibv_port_attr = std::mem::zeroed();
            check("ibv_query_port", ___ibv_query_port(ctx.as_ptr(), PORT, &mut port))?;
            let mut gid: ibv_gid = std::mem::zeroed();
            check("ibv_query_gid", ibv_query_gid(ctx.as_ptr(), PORT, GID_INDEX.into(), &mut gid))?;
            (dev.lid, dev.gid) = (port.lid, gid.raw);
        }
        Ok(Arc::new(dev))
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: every protection domain and completion queue holds an Arc of this device
        // (through its domain), so none is left; closed once.
        unsafe {
            ibv_close_device(self.ctx.as_ptr());
        }
    }
}

/// The protection domain of one ring session: its queue pair and its registered regions, and
/// nothing else. The NIC honours a remote key only on a queue pair of the domain its region was
/// registered in, so the keys a peer is given reach that session's memory through that
/// session's queue pair, never another peer's ring (with one domain per device, a peer's queue
/// pair could write every region registered for every peer, its key being all it needs).
#[derive(Debug)]
pub struct Domain {
    pd: NonNull<ibv_pd>,
    dev: Arc<Device>,
}

// SAFETY: as for `Device`; the pointer is owned by this value and freed once, in `drop`.
unsafe impl Send for Domain {}
// SAFETY: as above; `&Domain` only reads the pointer.
unsafe impl Sync for Domain {}

impl Domain {
    /// A fresh protection domain on `dev`, for one session.
    pub fn new(dev: &Arc<Device>) -> Result<Arc<Domain>, VerbsError> {
        // SAFETY: the context is open as long as `dev`, which the domain keeps.
        let pd = unsafe { ibv_alloc_pd(dev.ctx.as_ptr()) };
        let pd = NonNull::new(pd).ok_or_else(|| call_failed("ibv_alloc_pd"))?;
        Ok(Arc::new(Domain { pd, dev: dev.clone() }))
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        // SAFETY: every region and queue pair of this domain holds an Arc of it, so none is left
        // (ibv_dealloc_pd would fail otherwise); deallocated once.
        unsafe {
            ibv_dealloc_pd(self.pd.as_ptr());
        }
    }
}

/// Memory registered with the device: words the NIC reads (for our writes) or writes (for the
/// peer's), accessed by the CPU only through atomics.
#[derive(Debug)]
pub struct Region {
    words: Box<[AtomicU64]>,
    mr: NonNull<ibv_mr>,
    _domain: Arc<Domain>,
}

// SAFETY: as for `Device`; the words are atomics.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    /// `bytes` (rounded up to words) of zeroed memory, registered in `domain` for local writes
    /// and, if `remote_write`, for the RDMA WRITEs of the peer of that domain's queue pair.
    pub fn new(domain: &Arc<Domain>, bytes: usize, remote_write: bool) -> Result<Region, VerbsError> {
        let words: Box<[AtomicU64]> = (0..bytes.div_ceil(8).max(1)).map(|_| AtomicU64::new(0)).collect();
        let mut access = ibv_access_flags::IBV_ACCESS_LOCAL_WRITE;
        if remote_write {
            access |= ibv_access_flags::IBV_ACCESS_REMOTE_WRITE;
        }
        // SAFETY: the boxed words never move and outlive the registration (dropped after
        // ibv_dereg_mr in `drop`); the NIC's DMA into them is what the atomics allow.
        let mr = unsafe { ibv_reg_mr(domain.pd.as_ptr(), words.as_ptr() as *mut _, words.len() * 8, access.0 as i32) };
        let mr = NonNull::new(mr).ok_or_else(|| call_failed("ibv_reg_mr"))?;
        Ok(Region { words, mr, _domain: domain.clone() })
    }

    /// The registered words, as atomics (the peer writes them by RDMA).
    pub fn words(&self) -> &[AtomicU64] {
        &self.words
    }

    fn addr(&self) -> u64 {
        self.words.as_ptr() as u64
    }

    fn keys(&self) -> (u32, u32) {
        // SAFETY: `mr` is a live registration.
        unsafe { ((*self.mr.as_ptr()).lkey, (*self.mr.as_ptr()).rkey) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: registered in `new`, deregistered once; the queue pair that posted from it has
        // been destroyed first or is in the error state (the owners drop it first).
        unsafe {
            ibv_dereg_mr(self.mr.as_ptr());
        }
    }
}

const _: () = assert!(Endpoint::LEN == crate::runtime::shm_link::ENDPOINT_LEN, "the set-up carries whole endpoints");

/// What one end of a ring tells the other over TCP: its queue pair and the memory the other
/// may write (the reader's ring; the writer's credit word).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// The queue pair number.
    pub qpn: u32,
    /// The initial packet sequence number.
    pub psn: u32,
    /// The port's LID (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// The port's GID (RoCE addressing).
    pub gid: [u8; 16],
    /// The address of the memory the other may write.
    pub addr: u64,
    /// The remote key of that memory.
    pub rkey: u32,
    /// Bytes of memory at `addr` the other may write.
    pub len: u64,
}

impl Endpoint {
    /// Bytes of an encoded endpoint.
    pub const LEN: usize = 4 + 4 + 2 + 16 + 8 + 4 + 8;

    /// The endpoint as sent over TCP, little-endian.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0..4].copy_from_slice(&self.qpn.to_le_bytes());
        out[4..8].copy_from_slice(&self.psn.to_le_bytes());
        out[8..10].copy_from_slice(&self.lid.to_le_bytes());
        out[10..26].copy_from_slice(&self.gid);
        out[26..34].copy_from_slice(&self.addr.to_le_bytes());
        out[34..38].copy_from_slice(&self.rkey.to_le_bytes());
        out[38..46].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    /// Decodes a peer's endpoint; `min_len` is what this end will write there.
    pub fn decode(raw: &[u8; Self::LEN], min_len: u64) -> Result<Endpoint, VerbsError> {
        let u32_at = |i: usize| u32::from_le_bytes(raw[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(raw[i..i + 8].try_into().expect("8 bytes"));
        let e = Endpoint {
            qpn: u32_at(0),
            psn: u32_at(4),
            lid: u16::from_le_bytes([raw[8], raw[9]]),
            gid: raw[10..26].try_into().expect("16 bytes"),
            addr: u64_at(26),
            rkey: u32_at(34),
            len: u64_at(38),
        };
        if e.qpn >= 1 << 24 || e.psn >= 1 << 24 {
            return Err(VerbsError::BadEndpoint("queue pair or packet sequence number beyond 24 bits"));
        }
        if e.len < min_len || e.addr.checked_add(e.len).is_none() {
            return Err(VerbsError::BadEndpoint("memory smaller than the ring or past the address space"));
        }
        Ok(e)
    }
}

/// Which send-queue slots are taken. A write is unsignalled except every [`SIGNAL_EVERY`]th, and
/// the completion of a signalled one frees its slot and those of the unsignalled ones posted
/// before it (ibv_post_send(3)), so a slot is free again only once a later signalled write's
/// completion has been polled.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct SendSlots {
    /// Writes posted since the last signalled one.
    unsignalled: u32,
    /// Signalled writes whose completion has not been polled.
    in_flight: u32,
}

impl SendSlots {
    /// Slots a write may take now.
    fn free(&self) -> usize {
        (SEND_DEPTH - self.in_flight * SIGNAL_EVERY - self.unsignalled) as usize
    }

    /// Takes a slot for one write: whether that write is signalled; None if none is free.
    fn take(&mut self) -> Option<bool> {
        if self.free() == 0 {
            return None;
        }
        self.unsignalled += 1;
        let signal = self.unsignalled == SIGNAL_EVERY;
        if signal {
            (self.unsignalled, self.in_flight) = (0, self.in_flight + 1);
        }
        debug_assert!(self.in_flight as usize <= MAX_SIGNALLED, "more signalled writes than the queue holds");
        Some(signal)
    }

    /// A signalled write completed: its slots, and its unsignalled predecessors', are free.
    fn completed(&mut self) {
        debug_assert!(self.in_flight > 0, "a completion without a signalled write");
        self.in_flight = self.in_flight.saturating_sub(1);
    }
}

/// A reliable-connected queue pair with its completion queue, in its session's domain.
#[derive(Debug)]
pub struct QueuePair {
    qp: NonNull<ibv_qp>,
    cq: NonNull<ibv_cq>,
    psn: u32,
    slots: SendSlots,
    domain: Arc<Domain>,
}

// SAFETY: as for `Device`; one owner posts at a time (`&mut self`).
unsafe impl Send for QueuePair {}

impl QueuePair {
    /// A reliable-connected queue pair in `domain`, not yet connected.
    pub fn new(domain: &Arc<Domain>) -> Result<QueuePair, VerbsError> {
        // SAFETY: the context is open (the domain keeps the device); the CQ is destroyed in
        // `drop` after the QP.
        let cq = unsafe { ibv_create_cq(domain.dev.ctx.as_ptr(), CQ_DEPTH, ptr::null_mut(), ptr::null_mut(), 0) };
        let cq = NonNull::new(cq).ok_or_else(|| call_failed("ibv_create_cq"))?;
        // SAFETY: a zeroed init attribute with the fields RC needs set; the QP is destroyed in
        // `drop`. On failure the CQ is destroyed here.
        let qp = unsafe {
            let mut init: ibv_qp_init_attr = std::mem::zeroed();
            init.send_cq = cq.as_ptr();
            init.recv_cq = cq.as_ptr();
            init.qp_type = ibv_qp_type::IBV_QPT_RC;
            init.cap = ibv_qp_cap { max_send_wr: SEND_DEPTH, max_recv_wr: 1, max_send_sge: 2, max_recv_sge: 1, max_inline_data: 8 };
            match NonNull::new(ibv_create_qp(domain.pd.as_ptr(), &mut init)) {
                Some(qp) => qp,
                None => {
                    let e = call_failed("ibv_create_qp");
                    ibv_destroy_cq(cq.as_ptr());
                    return Err(e);
                }
            }
        };
        let psn = (std::process::id() ^ qp_num(qp)) & 0xff_ffff;
        Ok(QueuePair { qp, cq, psn, slots: SendSlots::default(), domain: domain.clone() })
    }

    /// This end's endpoint, offering `region` (None: nothing for the peer to write).
    pub fn endpoint(&self, region: &Region, remote_len: u64) -> Endpoint {
        let (_, rkey) = region.keys();
        let dev = &self.domain.dev;
        Endpoint { qpn: qp_num(self.qp), psn: self.psn, lid: dev.lid, gid: dev.gid, addr: region.addr(), rkey, len: remote_len }
    }

    /// Moves the queue pair through INIT, RTR and RTS towards `peer`.
    pub fn connect(&mut self, peer: &Endpoint) -> Result<(), VerbsError> {
        use ibv_qp_attr_mask as m;
        let qp = self.qp.as_ptr();
        // SAFETY: zeroed attributes with the fields named by each mask set; `qp` is live.
        unsafe {
            let mut a: ibv_qp_attr = std::mem::zeroed();
            a.qp_state = ibv_qp_state::IBV_QPS_INIT;
            a.port_num = PORT;
            a.qp_access_flags = ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0;
            let mask = m::IBV_QP_STATE | m::IBV_QP_PKEY_INDEX | m::IBV_QP_PORT | m::IBV_QP_ACCESS_FLAGS;
            check("ibv_modify_qp(INIT)", ibv_modify_qp(qp, &mut a, mask.0 as i32))?;

            let mut a: ibv_qp_attr = std::mem::zeroed();
            a.qp_state = ibv_qp_state::IBV_QPS_RTR;
            a.path_mtu = ibv_mtu::IBV_MTU_1024;
            a.dest_qp_num = peer.qpn;
            a.rq_psn = peer.psn;
            a.max_dest_rd_atomic = 1;
            a.min_rnr_timer = 12;
            a.ah_attr.dlid = peer.lid;
            a.ah_attr.port_num = PORT;
            a.ah_attr.is_global = 1;
            a.ah_attr.grh.dgid.raw = peer.gid;
            a.ah_attr.grh.sgid_index = GID_INDEX;
            a.ah_attr.grh.hop_limit = 64;
            let mask = m::IBV_QP_STATE
                | m::IBV_QP_AV
                | m::IBV_QP_PATH_MTU
                | m::IBV_QP_DEST_QPN
                | m::IBV_QP_RQ_PSN
                | m::IBV_QP_MAX_DEST_RD_ATOMIC
                | m::IBV_QP_MIN_RNR_TIMER;
            check("ibv_modify_qp(RTR)", ibv_modify_qp(qp, &mut a, mask.0 as i32))?;

            let mut a: ibv_qp_attr = std::mem::zeroed();
            a.qp_state = ibv_qp_state::IBV_QPS_RTS;
            a.sq_psn = self.psn;
            a.timeout = 14;
            a.retry_cnt = 7;
            a.rnr_retry = 7;
            a.max_rd_atomic = 1;
            let mask = m::IBV_QP_STATE
                | m::IBV_QP_SQ_PSN
                | m::IBV_QP_TIMEOUT
                | m::IBV_QP_RETRY_CNT
                | m::IBV_QP_RNR_RETRY
                | m::IBV_QP_MAX_QP_RD_ATOMIC;
            check("ibv_modify_qp(RTS)", ibv_modify_qp(qp, &mut a, mask.0 as i32))
        }
    }

    /// Posts one RDMA WRITE of `sges` (registered memory that stays unchanged until the peer has
    /// consumed it, or inline data of at most 8 bytes) to `remote_addr`, in a free send-queue
    /// slot (the caller made sure of one: [`Self::free_slots`]). Never waits.
    fn write(&mut self, sges: &mut [ibv_sge], remote_addr: u64, rkey: u32, inline: bool) -> Result<(), VerbsError> {
        debug_assert!(!sges.is_empty() && sges.len() <= 2, "one record or one word");
        let signal = self.slots.take().ok_or(VerbsError::SendQueueFull)?;
        let mut flags = if inline { ibv_send_flags::IBV_SEND_INLINE.0 } else { 0 };
        if signal {
            flags |= ibv_send_flags::IBV_SEND_SIGNALED.0;
        }
        // SAFETY: a zeroed work request with the RDMA WRITE fields set; the SGEs outlive the
        // call and name registered memory (or are copied, inline); `qp` is live.
        let rc = unsafe {
            let mut wr: ibv_send_wr = std::mem::zeroed();
            wr.sg_list = sges.as_mut_ptr();
            wr.num_sge = sges.len() as i32;
            wr.opcode = ibv_wr_opcode::IBV_WR_RDMA_WRITE;
            wr.send_flags = flags;
            wr.wr.rdma = rdma_t { remote_addr, rkey };
            let mut bad = ptr::null_mut();
            ibv_post_send(self.qp.as_ptr(), &mut wr, &mut bad)
        };
        check("ibv_post_send", rc)
    }

    /// Send-queue slots free now, after taking the completions the NIC has made.
    ///
    /// Never waits for one. The writer's caller may be the protocol thread holding its peer
    /// queue's lock (the transport lends it the ring), so a send must not spin on the NIC: a
    /// queue without room for a whole send is a full ring to it (`SendError::WouldBlock`), and
    /// the transport retries off the lock within its send timeout. Room comes back without us:
    /// on a reliable connection every signalled write completes, successfully or, once the
    /// retries are spent (timeout 14, 7 retries: about half a second), in error.
    pub fn free_slots(&mut self) -> Result<usize, VerbsError> {
        self.reap()?;
        Ok(self.slots.free())
    }

    /// Takes the completions waiting in the completion queue, one non-blocking poll
    /// (ibv_poll_cq(3) returns at once, with what is there): each frees its write's slots.
    fn reap(&mut self) -> Result<(), VerbsError> {
        // SAFETY: zeroed completions the call fills, at most `MAX_SIGNALLED` of them, in an
        // array of that many; the CQ is live.
        let (n, wcs) = unsafe {
            let mut wcs: [ibv_wc; MAX_SIGNALLED] = std::mem::zeroed();
            (ibv_poll_cq(self.cq.as_ptr(), MAX_SIGNALLED as i32, wcs.as_mut_ptr()), wcs)
        };
        let n = usize::try_from(n).map_err(|_| VerbsError::Call { call: "ibv_poll_cq", errno: n.saturating_neg() })?;
        for wc in &wcs[..n.min(MAX_SIGNALLED)] {
            if wc.status != ibv_wc_status::IBV_WC_SUCCESS {
                return Err(VerbsError::Completion { status: wc.status, vendor: wc.vendor_err });
            }
            self.slots.completed();
        }
        Ok(())
    }
}

fn qp_num(qp: NonNull<ibv_qp>) -> u32 {
    // SAFETY: a live queue pair.
    unsafe { (*qp.as_ptr()).qp_num }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once, the QP before its CQ.
        unsafe {
            ibv_destroy_qp(self.qp.as_ptr());
            ibv_destroy_cq(self.cq.as_ptr());
        }
    }
}

/// The writer's view of the peer's ring: records are staged in a registered mirror of the
/// ring's data (a slot is reused only once the reader has consumed it, so a posted WRITE's
/// source never changes under it) and written with RDMA WRITE; the reader writes its credit
/// word into `credit`. Queue pair and regions are in a domain of this session's own.
#[derive(Debug)]
pub struct VerbsRemote {
    /// Dropped first: the queue pair goes before the regions it writes from.
    qp: QueuePair,
    staging: Region,
    credit: Region,
    peer: Endpoint,
    capacity: usize,
    /// The first verbs error: the ring is dead from then on, and the transport must end the
    /// session (`RemoteMemory` calls cannot fail, so they are checked through [`Self::error`]).
    error: Option<VerbsError>,
}

impl VerbsRemote {
    /// The writer's half before connecting: its queue pair and the credit word the reader
    /// will write. Send [`Self::endpoint`] to the reader, then [`Self::connect`] with its answer.
    pub fn new(dev: &Arc<Device>, capacity: u64) -> Result<VerbsRemote, VerbsError> {
        let capacity = check_capacity(capacity).map_err(|_| VerbsError::BadEndpoint("ring capacity"))?;
        let domain = Domain::new(dev)?;
        Ok(VerbsRemote {
            qp: QueuePair::new(&domain)?,
            staging: Region::new(&domain, capacity, false)?,
            credit: Region::new(&domain, 64, true)?,
            peer: Endpoint { qpn: 0, psn: 0, lid: 0, gid: [0; 16], addr: 0, rkey: 0, len: 0 },
            capacity,
            error: None,
        })
    }

    /// What the reader needs to reach this writer: its queue pair and credit word.
    pub fn endpoint(&self) -> Endpoint {
        self.qp.endpoint(&self.credit, 8)
    }

    /// Connects to the reader's endpoint, which must offer a whole ring of our capacity.
    pub fn connect(&mut self, peer: &Endpoint) -> Result<(), VerbsError> {
        let ring = region_bytes(self.capacity) as u64;
        let peer = Endpoint::decode(&peer.encode(), ring)?;
        // Exactly ours: a larger ring would wrap at another offset than this writer does.
        if peer.len != ring {
            return Err(VerbsError::BadEndpoint("a ring of another capacity than the writer's"));
        }
        self.qp.connect(&peer)?;
        self.peer = peer;
        Ok(())
    }

    /// The failure that ended the session, if any.
    pub fn error(&self) -> Option<&VerbsError> {
        self.error.as_ref()
    }

    /// Whether a whole send ([`MAX_WRITES_PER_SEND`] writes) fits the send queue now, after
    /// taking the completions waiting; never waits (see [`QueuePair::free_slots`]). A failed
    /// completion is kept in [`Self::error`].
    pub fn room_for_a_send(&mut self) -> bool {
        if self.error.is_some() {
            return false;
        }
        match self.qp.free_slots() {
            Ok(free) => free >= MAX_WRITES_PER_SEND,
            Err(e) => {
                self.error = Some(e);
                false
            }
        }
    }

    fn post(&mut self, sges: &mut [ibv_sge], word: usize, offset: usize, inline: bool) {
        if self.error.is_none() {
            let remote = self.peer.addr + (word * 8 + offset) as u64;
            if let Err(e) = self.qp.write(sges, remote, self.peer.rkey, inline) {
                self.error = Some(e);
            }
        }
    }
}

impl RemoteMemory for VerbsRemote {
    fn capacity(&self) -> usize {
        self.capacity
    }

    fn write_record(&mut self, offset: usize, header: u64, payload: &[u8]) {
        let words = self.staging.words();
        let first = offset / 8;
        words[first].store(header, Ordering::Relaxed);
        for (word, chunk) in words[first + 1..].iter().zip(payload.chunks(8)) {
            let mut bytes = [0u8; 8];
            bytes[..chunk.len()].copy_from_slice(chunk);
            word.store(u64::from_le_bytes(bytes), Ordering::Relaxed);
        }
        let len = 8 + payload.len().next_multiple_of(8);
        let (lkey, _) = self.staging.keys();
        let mut sge = [ibv_sge { addr: self.staging.addr() + offset as u64, length: len as u32, lkey }];
        self.post(&mut sge, DATA_WORD, offset, false);
    }

    fn ring_doorbell(&mut self, word: u64) {
        // Inline: the NIC copies the word at post time. Same queue pair as the records, so the
        // reader sees it after them.
        let mut sge = [ibv_sge { addr: &word as *const u64 as u64, length: 8, lkey: 0 }];
        self.post(&mut sge, DOORBELL_WORD, 0, true);
    }

    fn credits(&self) -> u64 {
        self.credit.words()[0].load(Ordering::Acquire)
    }
}

/// The reader's own ring, registered for the writer's RDMA WRITEs in a domain of this session's
/// own; credits go back as an inline WRITE into the writer's credit word.
#[derive(Debug)]
pub struct VerbsLocal {
    /// Dropped first: the queue pair goes before the region the peer writes.
    qp: QueuePair,
    ring: Region,
    peer: Endpoint,
    capacity: usize,
    /// A credit word not yet posted: the send queue was full when it was returned.
    unsent_credit: Option<u64>,
    /// The first verbs error: the session is over ([`LocalMemory::failed`] says so).
    error: Option<VerbsError>,
}

impl VerbsLocal {
    /// The reader's half: its ring of `capacity` data bytes and queue pair, connected to the
    /// writer's `peer` endpoint. Send [`Self::endpoint`] back.
    pub fn new(dev: &Arc<Device>, capacity: u64, peer: &Endpoint) -> Result<VerbsLocal, VerbsError> {
        let capacity = check_capacity(capacity).map_err(|_| VerbsError::BadEndpoint("ring capacity"))?;
        let peer = Endpoint::decode(&peer.encode(), 8)?;
        let domain = Domain::new(dev)?;
        let ring = Region::new(&domain, region_bytes(capacity), true)?;
        super::memory::format(ring.words(), capacity);
        let mut qp = QueuePair::new(&domain)?;
        qp.connect(&peer)?;
        Ok(VerbsLocal { qp, ring, peer, capacity, unsent_credit: None, error: None })
    }

    /// What the writer needs to reach this reader: its queue pair and ring.
    pub fn endpoint(&self) -> Endpoint {
        self.qp.endpoint(&self.ring, region_bytes(self.capacity) as u64)
    }

    /// The failure that ended the session, if any.
    pub fn error(&self) -> Option<&VerbsError> {
        self.error.as_ref()
    }

    /// Takes the completions waiting and posts the unsent credit word if a slot is free; never
    /// waits (a full send queue keeps the word for the next call). The first error is kept.
    fn upkeep(&mut self) {
        if self.error.is_none() {
            if let Err(e) = self.post_unsent_credit() {
                tracing::warn!(error = %e, "RDMA ring: the reader's queue pair failed; the session ends");
                self.error = Some(e);
            }
        }
    }

    fn post_unsent_credit(&mut self) -> Result<(), VerbsError> {
        let free = self.qp.free_slots()?;
        if let Some(word) = self.unsent_credit.filter(|_| free > 0) {
            let mut sge = [ibv_sge { addr: &word as *const u64 as u64, length: 8, lkey: 0 }];
            self.qp.write(&mut sge, self.peer.addr, self.peer.rkey, true)?;
            self.unsent_credit = None;
        }
        Ok(())
    }
}

impl LocalMemory for VerbsLocal {
    fn capacity(&self) -> usize {
        self.capacity
    }

    fn doorbell(&self) -> u64 {
        self.ring.words()[DOORBELL_WORD].load(Ordering::Acquire)
    }

    fn read_word(&self, offset: usize) -> u64 {
        self.ring.words()[DATA_WORD + offset / 8].load(Ordering::Relaxed)
    }

    fn read_payload(&self, offset: usize, len: usize, out: &mut bytes::BytesMut) {
        super::memory::append_payload(&self.ring.words()[DATA_WORD + offset / 8..], len, out);
    }

    fn return_credits(&mut self, word: u64) {
        // A newer credit word supersedes one still unsent: credits only grow.
        self.unsent_credit = Some(word);
        self.upkeep();
        // Our own copy too, for `RingReader::open`'s reset to be visible locally.
        self.ring.words()[CREDIT_WORD].store(word, Ordering::Release);
    }

    /// Polls the completion queue before every read, so that a dead queue pair (a credit
    /// write it posted completed in error, say because the writer's end is gone) ends the
    /// session, and retries a credit word the full send queue held back. An idle reader posts
    /// no credit write, so a writer gone meanwhile is noticed by the TCP lifeline instead.
    fn failed(&mut self) -> bool {
        self.upkeep();
        self.error.is_some()
    }
}

impl crate::runtime::shm_link::RingSender for super::RingWriter<VerbsRemote> {
    /// Never waits for the NIC: the protocol thread calls this holding its peer queue's lock
    /// (`transport/link.rs`, when the connection task lends it the ring). Without send-queue room for
    /// a whole send, the ring is as good as full (`WouldBlock`): the packet goes to the
    /// connection task, which retries off the lock, and fails the connection if the room has
    /// not come back within the send timeout.
    fn send(&mut self, packet: &[u8]) -> Result<(), super::SendError> {
        let room = self.memory_mut().room_for_a_send();
        if self.memory().error().is_some() {
            return Err(super::SendError::MemoryFailed);
        }
        if !room {
            return Err(super::SendError::WouldBlock);
        }
        self.try_send(packet)?;
        match self.memory().error() {
            None => Ok(()),
            Some(_) => Err(super::SendError::MemoryFailed),
        }
    }
}

impl crate::runtime::shm_link::RingMemory for VerbsLocal {
    /// The polled doorbell has no notification: a short sleep. (Write-with-immediate and a
    /// completion channel would give one; not built.)
    fn doze(&self, _seen: u64, timeout: std::time::Duration) {
        std::thread::sleep(timeout.min(std::time::Duration::from_micros(50)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_round_trip_and_hostile_ones_are_refused() {
        let e = Endpoint { qpn: 0x12_3456, psn: 7, lid: 3, gid: [9; 16], addr: 0x7000_0000, rkey: 42, len: 4096 };
        assert_eq!(Endpoint::decode(&e.encode(), 4096), Ok(e));
        assert!(Endpoint::decode(&e.encode(), 4097).is_err(), "smaller than the ring");
        let mut raw = e.encode();
        raw[3] = 1; // qpn beyond 24 bits
        assert!(Endpoint::decode(&raw, 8).is_err());
        let wraps = Endpoint { addr: u64::MAX - 8, ..e };
        assert!(Endpoint::decode(&wraps.encode(), 8).is_err(), "past the address space");
    }

    /// Random posts and completions against a model of the send queue (the NIC completes in
    /// order; a signalled completion frees everything posted up to it): the slots count exactly
    /// the outstanding writes, never admit more than the queue holds, and a send begun with
    /// room for [`MAX_WRITES_PER_SEND`] writes always finds a slot for each.
    #[test]
    fn send_slots_count_the_outstanding_writes_and_never_overflow() {
        let mut rng = crate::paxos::SplitMix64::new(16);
        let (mut slots, mut queue) = (SendSlots::default(), std::collections::VecDeque::new());
        let mut completions = 0;
        for _ in 0..100_000 {
            if rng.below(3) == 0 && queue.contains(&true) {
                while queue.pop_front() == Some(false) {}
                slots.completed();
                completions += 1;
            } else if slots.free() >= MAX_WRITES_PER_SEND {
                for _ in 0..=rng.below(MAX_WRITES_PER_SEND as u64) {
                    queue.push_back(slots.take().expect("room was checked for a whole send"));
                }
            } else {
                let before = slots;
                if slots.free() == 0 {
                    assert_eq!(slots.take(), None, "a full queue takes nothing");
                }
                assert_eq!(slots, before);
            }
            assert_eq!(queue.len(), SEND_DEPTH as usize - slots.free(), "{slots:?}");
            assert!(queue.iter().filter(|&&s| s).count() <= MAX_SIGNALLED);
        }
        assert!(completions > 1000, "the queue cycled");
    }

    #[test]
    fn each_session_registers_in_a_protection_domain_of_its_own() {
        let Ok(dev) = Device::open_first() else { return }; // no device (CI, this machine)
        let (a, b) = (VerbsRemote::new(&dev, 4096).expect("writer"), VerbsRemote::new(&dev, 4096).expect("writer"));
        assert_ne!(a.qp.domain.pd, b.qp.domain.pd, "two sessions, two domains");
        for w in [&a, &b] {
            for region in [&w.staging, &w.credit] {
                // SAFETY: a live registration; its `pd` is the domain it was registered in.
                let pd = unsafe { (*region.mr.as_ptr()).pd };
                assert_eq!(pd, w.qp.domain.pd.as_ptr(), "a session's regions are in its domain");
            }
        }
    }

    #[test]
    fn without_a_device_opening_fails_with_a_typed_error() {
        // CI machines have no RDMA device; on one that has, this opens it.
        match Device::open_first() {
            Ok(_) => {}
            Err(e) => assert!(matches!(e, VerbsError::NoDevice | VerbsError::Call { .. }), "{e}"),
        }
    }
}
