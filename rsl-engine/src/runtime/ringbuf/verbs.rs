//! The RDMA verbs implementation of the remote-memory traits (cargo feature `rdma`): a ring's
//! memory registered with the NIC, a reliable-connected queue pair per ring, records written
//! with one-sided RDMA WRITE, the doorbell and the credit word as 8-byte inline WRITEs on the same
//! queue pair (so the reader never sees a tail before the record it covers). The connection is
//! set up by exchanging [`Endpoint`]s over the peer's TCP connection.
//!
//! Compiled in CI; it has not run on RDMA hardware or soft-RoCE here (docs/rdma.md says what
//! was and was not verified).

#![allow(unsafe_code)]

use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rdma_sys::*;

use super::{check_capacity, region_bytes, LocalMemory, RemoteMemory, CREDIT_WORD, DATA_WORD, DOORBELL_WORD};

/// The port every queue pair uses (the first; a multi-port NIC is configured outside).
const PORT: u8 = 1;
/// The GID index (0: the port's default GID; RoCE v2 deployments may need another).
const GID_INDEX: u8 = 0;
/// Send queue depth. Writes are unsignalled except every [`SIGNAL_EVERY`]th, whose completion
/// frees the queue slots of those before it.
const SEND_DEPTH: u32 = 256;
const SIGNAL_EVERY: u32 = 64;

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

/// An opened device with its protection domain and this port's addressing.
#[derive(Debug)]
pub struct Device {
    ctx: NonNull<ibv_context>,
    pd: NonNull<ibv_pd>,
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
        // SAFETY: `ctx` is an open context; on failure it is closed before returning.
        let pd = unsafe {
            match NonNull::new(ibv_alloc_pd(ctx.as_ptr())) {
                Some(pd) => pd,
                None => {
                    let e = call_failed("ibv_alloc_pd");
                    ibv_close_device(ctx.as_ptr());
                    return Err(e);
                }
            }
        };
        let mut dev = Device { ctx, pd, lid: 0, gid: [0; 16] };
        // SAFETY: zeroed C structs are valid inputs; the calls fill them.
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
        // SAFETY: every region and queue pair holds an Arc of this device, so none is left.
        unsafe {
            ibv_dealloc_pd(self.pd.as_ptr());
            ibv_close_device(self.ctx.as_ptr());
        }
    }
}

/// Memory registered with the device: words the NIC reads (for our writes) or writes (for the
/// peer's), accessed by the CPU only through atomics.
#[derive(Debug)]
pub struct Region {
    words: Box<[AtomicU64]>,
    mr: NonNull<ibv_mr>,
    _dev: Arc<Device>,
}

// SAFETY: as for `Device`; the words are atomics.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    /// `bytes` (rounded up to words) of zeroed memory, registered for local writes and, if
    /// `remote_write`, for the peer's RDMA WRITEs.
    pub fn new(dev: &Arc<Device>, bytes: usize, remote_write: bool) -> Result<Region, VerbsError> {
        let words: Box<[AtomicU64]> = (0..bytes.div_ceil(8).max(1)).map(|_| AtomicU64::new(0)).collect();
        let mut access = ibv_access_flags::IBV_ACCESS_LOCAL_WRITE;
        if remote_write {
            access |= ibv_access_flags::IBV_ACCESS_REMOTE_WRITE;
        }
        // SAFETY: the boxed words never move and outlive the registration (dropped after
        // ibv_dereg_mr in `drop`); the NIC's DMA into them is what the atomics allow.
        let mr = unsafe { ibv_reg_mr(dev.pd.as_ptr(), words.as_ptr() as *mut _, words.len() * 8, access.0 as i32) };
        let mr = NonNull::new(mr).ok_or_else(|| call_failed("ibv_reg_mr"))?;
        Ok(Region { words, mr, _dev: dev.clone() })
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

/// A reliable-connected queue pair with its completion queue.
#[derive(Debug)]
pub struct QueuePair {
    qp: NonNull<ibv_qp>,
    cq: NonNull<ibv_cq>,
    psn: u32,
    /// Work requests posted since the last signalled one.
    unsignalled: u32,
    /// Signalled work requests whose completion has not been polled.
    in_flight: u32,
    dev: Arc<Device>,
}

// SAFETY: as for `Device`; one owner posts at a time (`&mut self`).
unsafe impl Send for QueuePair {}

impl QueuePair {
    /// A reliable-connected queue pair on `dev`, not yet connected.
    pub fn new(dev: &Arc<Device>) -> Result<QueuePair, VerbsError> {
        let depth = (SEND_DEPTH / SIGNAL_EVERY + 1) as i32;
        // SAFETY: the context is open; the CQ is destroyed in `drop` after the QP.
        let cq = unsafe { ibv_create_cq(dev.ctx.as_ptr(), depth, ptr::null_mut(), ptr::null_mut(), 0) };
        let cq = NonNull::new(cq).ok_or_else(|| call_failed("ibv_create_cq"))?;
        // SAFETY: a zeroed init attribute with the fields RC needs set; the QP is destroyed in
        // `drop`. On failure the CQ is destroyed here.
        let qp = unsafe {
            let mut init: ibv_qp_init_attr = std::mem::zeroed();
            init.send_cq = cq.as_ptr();
            init.recv_cq = cq.as_ptr();
            init.qp_type = ibv_qp_type::IBV_QPT_RC;
            init.cap = ibv_qp_cap { max_send_wr: SEND_DEPTH, max_recv_wr: 1, max_send_sge: 2, max_recv_sge: 1, max_inline_data: 8 };
            match NonNull::new(ibv_create_qp(dev.pd.as_ptr(), &mut init)) {
                Some(qp) => qp,
                None => {
                    let e = call_failed("ibv_create_qp");
                    ibv_destroy_cq(cq.as_ptr());
                    return Err(e);
                }
            }
        };
        let psn = (std::process::id() ^ qp_num(qp)) & 0xff_ffff;
        Ok(QueuePair { qp, cq, psn, unsignalled: 0, in_flight: 0, dev: dev.clone() })
    }

    /// This end's endpoint, offering `region` (None: nothing for the peer to write).
    pub fn endpoint(&self, region: &Region, remote_len: u64) -> Endpoint {
        let (_, rkey) = region.keys();
        Endpoint { qpn: qp_num(self.qp), psn: self.psn, lid: self.dev.lid, gid: self.dev.gid, addr: region.addr(), rkey, len: remote_len }
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
    /// consumed it, or inline data of at most 8 bytes) to `remote_addr`.
    fn write(&mut self, sges: &mut [ibv_sge], remote_addr: u64, rkey: u32, inline: bool) -> Result<(), VerbsError> {
        debug_assert!(!sges.is_empty() && sges.len() <= 2, "one record or one word");
        self.unsignalled += 1;
        let signal = self.unsignalled >= SIGNAL_EVERY;
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
        check("ibv_post_send", rc)?;
        if signal {
            self.unsignalled = 0;
            self.in_flight += 1;
        }
        self.reap()
    }

    /// Polls completions; waits (spinning) while the send queue could overflow.
    fn reap(&mut self) -> Result<(), VerbsError> {
        loop {
            // SAFETY: a zeroed completion the call fills; the CQ is live.
            let (n, wc) = unsafe {
                let mut wc: ibv_wc = std::mem::zeroed();
                (ibv_poll_cq(self.cq.as_ptr(), 1, &mut wc), wc)
            };
            if n < 0 {
                return Err(VerbsError::Call { call: "ibv_poll_cq", errno: -n });
            }
            if n == 1 {
                if wc.status != ibv_wc_status::IBV_WC_SUCCESS {
                    return Err(VerbsError::Completion { status: wc.status, vendor: wc.vendor_err });
                }
                self.in_flight -= 1;
                continue;
            }
            if self.in_flight < SEND_DEPTH / SIGNAL_EVERY - 1 {
                return Ok(());
            }
            std::hint::spin_loop();
        }
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
/// word into `credit`.
#[derive(Debug)]
pub struct VerbsRemote {
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
        Ok(VerbsRemote {
            qp: QueuePair::new(dev)?,
            staging: Region::new(dev, capacity, false)?,
            credit: Region::new(dev, 64, true)?,
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

/// The reader's own ring, registered for the writer's RDMA WRITEs; credits go back as an inline
/// WRITE into the writer's credit word.
#[derive(Debug)]
pub struct VerbsLocal {
    qp: QueuePair,
    ring: Region,
    peer: Endpoint,
    capacity: usize,
    error: Option<VerbsError>,
}

impl VerbsLocal {
    /// The reader's half: its ring of `capacity` data bytes and queue pair, connected to the
    /// writer's `peer` endpoint. Send [`Self::endpoint`] back.
    pub fn new(dev: &Arc<Device>, capacity: u64, peer: &Endpoint) -> Result<VerbsLocal, VerbsError> {
        let capacity = check_capacity(capacity).map_err(|_| VerbsError::BadEndpoint("ring capacity"))?;
        let peer = Endpoint::decode(&peer.encode(), 8)?;
        let ring = Region::new(dev, region_bytes(capacity), true)?;
        super::memory::format(ring.words(), capacity);
        let mut qp = QueuePair::new(dev)?;
        qp.connect(&peer)?;
        Ok(VerbsLocal { qp, ring, peer, capacity, error: None })
    }

    /// What the writer needs to reach this reader: its queue pair and ring.
    pub fn endpoint(&self) -> Endpoint {
        self.qp.endpoint(&self.ring, region_bytes(self.capacity) as u64)
    }

    /// The failure that ended the session, if any.
    pub fn error(&self) -> Option<&VerbsError> {
        self.error.as_ref()
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
        if self.error.is_none() {
            let mut sge = [ibv_sge { addr: &word as *const u64 as u64, length: 8, lkey: 0 }];
            if let Err(e) = self.qp.write(&mut sge, self.peer.addr, self.peer.rkey, true) {
                self.error = Some(e);
            }
        }
        // Our own copy too, for `RingReader::open`'s reset to be visible locally.
        self.ring.words()[CREDIT_WORD].store(word, Ordering::Release);
    }
}

impl crate::runtime::shm_link::RingSender for super::RingWriter<VerbsRemote> {
    fn send(&mut self, packet: &[u8]) -> Result<(), super::SendError> {
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

    #[test]
    fn without_a_device_opening_fails_with_a_typed_error() {
        // CI machines have no RDMA device; on one that has, this opens it.
        match Device::open_first() {
            Ok(_) => {}
            Err(e) => assert!(matches!(e, VerbsError::NoDevice | VerbsError::Call { .. }), "{e}"),
        }
    }
}
