//! The flood of `bench flood`: SYN frames from the banned source to the
//! server veth's MAC (so without XDP the kernel's TCP stack takes each one
//! as its own), sent with AF_PACKET `sendmmsg` from the client namespace by
//! one thread pinned to its own CPU, counted, for as long as a measurement
//! runs.
use std::{
    net::{IpAddr, Ipv4Addr},
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use anyhow::{Context, Result};
use gateway_tests::{
    packet::{RawSender, TcpFrame},
    NetNs, Topology, CLIENT_IF, SERVER_IF, SERVER_V4,
};

use crate::bench::procs::pin_thread_to;

/// Frames a batch: one `sendmmsg`.
const BATCH: usize = 64;

/// The flood's frames and where it runs.
pub(super) struct Flood {
    frames: Arc<Vec<Vec<u8>>>,
    cpu: usize,
}

impl Flood {
    /// SYNs from `source` to the server veth's `port`, with 4,096 rotating
    /// source ports, sent from `topology`'s client side on `cpu`.
    pub(super) fn new(
        topology: &Topology,
        source: Ipv4Addr,
        port: u16,
        cpu: usize,
    ) -> Result<Self> {
        let mac = server_mac(topology)?;
        let frames = (0..4096u16)
            .map(|i| {
                let mut frame = TcpFrame::syn(
                    IpAddr::V4(source),
                    SERVER_V4.parse().expect("a v4 address"),
                    port,
                );
                frame.src_port = 10_000 + i;
                frame.dst_mac = mac;
                frame.build()
            })
            .collect();
        Ok(Self {
            frames: Arc::new(frames),
            cpu,
        })
    }

    /// Runs `work` while the flood goes from `client` (the namespace of
    /// the topology the frames were made for) at `rate` pps (0: as fast as
    /// possible); returns its result and the rate achieved. Bounded by
    /// `work`'s time.
    pub(super) fn during<T>(
        &self,
        client: &NetNs,
        rate: u64,
        work: impl FnOnce() -> T,
    ) -> Result<(T, f64)> {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (frames, cpu) = (self.frames.clone(), self.cpu);
        let (stop_flag, counter) = (stop.clone(), sent.clone());
        let sender = client.spawn(move || -> Result<()> {
            pin_thread_to(cpu)?;
            let socket = RawSender::open(CLIENT_IF)?;
            let started = Instant::now();
            let mut next = 0usize;
            while !stop_flag.load(Ordering::Relaxed) {
                let done = counter.load(Ordering::Relaxed);
                if rate > 0 && done as f64 > rate as f64 * started.elapsed().as_secs_f64() {
                    std::thread::yield_now();
                    continue;
                }
                let batch: Vec<&[u8]> = (0..BATCH)
                    .map(|i| frames[(next + i) % frames.len()].as_slice())
                    .collect();
                next = (next + BATCH) % frames.len();
                match socket.send_many(&batch) {
                    Ok(n) => {
                        counter.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    // The device queue is full: the receiver is the bottleneck.
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => std::thread::yield_now(),
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        });
        let started = Instant::now();
        let result = work();
        stop.store(true, Ordering::Relaxed);
        let elapsed = started.elapsed().as_secs_f64();
        sender
            .join()
            .map_err(|_| anyhow::anyhow!("the flood sender panicked"))?
            .context("flood sender")?;
        Ok((result, sent.load(Ordering::Relaxed) as f64 / elapsed))
    }
}

fn server_mac(topology: &Topology) -> Result<[u8; 6]> {
    let output = Command::new("ip")
        .args(["-n", &topology.server.name, "-j", "link", "show", SERVER_IF])
        .output()?;
    let links: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let text = links[0]["address"]
        .as_str()
        .context("no MAC on the server veth")?;
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(part, 16)?;
    }
    Ok(mac)
}
