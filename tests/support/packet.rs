//! Hand-built Ethernet frames, for what the client stack will not send by
//! itself (VLAN tags on a kernel without 802.1Q, IPv4 options, IPv6
//! extension headers) and for `bpftool prog run` in the XDP bench.
//! Checksums are left zero: XDP does not check them.
use std::{io, net::IpAddr};

pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

/// IPv6 extension headers the frame may carry before TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipv6Ext {
    DestinationOptions,
    /// Hop-by-hop options (8 bytes of padding); the kernel wants it first.
    HopByHop,
    /// A first fragment (offset 0), which still carries the TCP header.
    FirstFragment,
}

/// A TCP segment to `dst_port`, SYN by default.
#[derive(Clone, Debug)]
pub struct TcpFrame {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub dst_port: u16,
    /// Floods vary it, so each SYN is a new half-open connection.
    pub src_port: u16,
    /// Broadcast by default (XDP does not care); the receiver's own MAC
    /// when the kernel's TCP stack must take the frame as for this host.
    pub dst_mac: [u8; 6],
    /// Outermost first: `(tpid, vlan id)`.
    pub vlans: Vec<(u16, u16)>,
    /// Adds one 4-byte IPv4 option (NOPs), so IHL is 6.
    pub ipv4_options: bool,
    pub ipv6_ext: Vec<Ipv6Ext>,
    pub syn: bool,
    /// An 8-byte UDP header (to the same ports) instead of TCP.
    pub udp: bool,
}

impl TcpFrame {
    pub fn syn(src: IpAddr, dst: IpAddr, dst_port: u16) -> Self {
        Self {
            src,
            dst,
            dst_port,
            src_port: 40000,
            dst_mac: [0xff; 6],
            vlans: Vec::new(),
            ipv4_options: false,
            ipv6_ext: Vec::new(),
            syn: true,
            udp: false,
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut frame = Vec::with_capacity(128);
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // source MAC: local
        for (tpid, id) in &self.vlans {
            frame.extend_from_slice(&tpid.to_be_bytes());
            frame.extend_from_slice(&id.to_be_bytes());
        }
        let tcp = self.l4_header();
        let proto = if self.udp { 17u8 } else { 6 };
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                frame.extend_from_slice(&0x0800u16.to_be_bytes());
                let options: &[u8] = if self.ipv4_options {
                    &[1, 1, 1, 0]
                } else {
                    &[]
                };
                let header_len = 20 + options.len();
                let total = u16::try_from(header_len + tcp.len()).unwrap_or(u16::MAX);
                frame.push(0x40 | (header_len / 4) as u8);
                frame.push(0);
                frame.extend_from_slice(&total.to_be_bytes());
                frame.extend_from_slice(&[0, 1, 0x40, 0]); // id 1, DF
                frame.extend_from_slice(&[64, proto, 0, 0]); // TTL, protocol, checksum
                frame.extend_from_slice(&src.octets());
                frame.extend_from_slice(&dst.octets());
                frame.extend_from_slice(options);
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                frame.extend_from_slice(&0x86ddu16.to_be_bytes());
                let mut ext = Vec::new();
                let mut next_headers = Vec::new();
                for header in &self.ipv6_ext {
                    next_headers.push(match header {
                        Ipv6Ext::DestinationOptions => 60u8,
                        Ipv6Ext::HopByHop => 0,
                        Ipv6Ext::FirstFragment => 44,
                    });
                }
                next_headers.push(proto);
                for (index, header) in self.ipv6_ext.iter().enumerate() {
                    let next = next_headers[index + 1];
                    match header {
                        // 8 bytes: next, length 0, PadN option of 4 bytes.
                        Ipv6Ext::DestinationOptions | Ipv6Ext::HopByHop => {
                            ext.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0])
                        }
                        // 8 bytes: next, reserved, offset 0 + M flag, id.
                        Ipv6Ext::FirstFragment => {
                            ext.extend_from_slice(&[next, 0, 0, 1, 0, 0, 0, 7])
                        }
                    }
                }
                let payload = u16::try_from(ext.len() + tcp.len()).unwrap_or(u16::MAX);
                frame.extend_from_slice(&[0x60, 0, 0, 0]);
                frame.extend_from_slice(&payload.to_be_bytes());
                frame.push(next_headers[0]);
                frame.push(64);
                frame.extend_from_slice(&src.octets());
                frame.extend_from_slice(&dst.octets());
                frame.extend_from_slice(&ext);
            }
            _ => panic!("source and destination must be the same family"),
        }
        frame.extend_from_slice(&tcp);
        frame
    }

    /// The TCP header, or with [`TcpFrame::udp`] an 8-byte UDP header.
    fn l4_header(&self) -> Vec<u8> {
        if self.udp {
            let mut udp = vec![0u8; 8];
            udp[0..2].copy_from_slice(&self.src_port.to_be_bytes());
            udp[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
            udp[4..6].copy_from_slice(&8u16.to_be_bytes());
            return udp;
        }
        self.tcp_header().to_vec()
    }

    /// The IPv4 frame split into two fragments (datagram id `id`): the
    /// first carries `first` bytes (a multiple of 8) of the L4 header with
    /// More Fragments set, the second the rest at offset `first`. The
    /// TCP checksum is computed, since the kernel reassembles and checks it.
    pub fn ipv4_fragments(&self, first: usize, id: u16) -> Vec<Vec<u8>> {
        let whole = self.with_tcp_checksum();
        let l3 = 14 + 4 * self.vlans.len();
        let header_len = usize::from(whole[l3] & 0x0f) * 4;
        let l4 = l3 + header_len;
        let pieces = [
            (&whole[l4..l4 + first], 0u16, true),
            (&whole[l4 + first..], first as u16 / 8, false),
        ];
        pieces
            .iter()
            .map(|(payload, offset, more)| {
                let mut frame = whole[..l4].to_vec();
                let total = (header_len + payload.len()) as u16;
                frame[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
                frame[l3 + 4..l3 + 6].copy_from_slice(&id.to_be_bytes());
                let flags = if *more { 0x2000 } else { 0 } | offset;
                frame[l3 + 6..l3 + 8].copy_from_slice(&flags.to_be_bytes());
                frame[l3 + 10..l3 + 12].fill(0);
                let checksum = internet_checksum(&frame[l3..l4], 0);
                frame[l3 + 10..l3 + 12].copy_from_slice(&checksum.to_be_bytes());
                frame.extend_from_slice(payload);
                frame
            })
            .collect()
    }

    /// The IPv6 frame split into two fragments behind a Fragment header
    /// (after any other extension headers): the first carries `first`
    /// bytes (a multiple of 8) of the L4 header, the second the rest.
    pub fn ipv6_fragments(&self, first: usize, id: u32) -> Vec<Vec<u8>> {
        let whole = self.build();
        let l3 = 14 + 4 * self.vlans.len();
        let ext_len: usize = self.ipv6_ext.len() * 8;
        let l4 = l3 + 40 + ext_len;
        let proto = if self.udp { 17u8 } else { 6 };
        let pieces = [
            (&whole[l4..l4 + first], 0u16, true),
            (&whole[l4 + first..], first as u16, false),
        ];
        pieces
            .iter()
            .map(|(payload, offset, more)| {
                let mut frame = whole[..l4].to_vec();
                // The last next-header field before L4 now names Fragment.
                let next_at = if self.ipv6_ext.is_empty() {
                    l3 + 6
                } else {
                    l4 - 8
                };
                frame[next_at] = 44;
                let field = offset | u16::from(*more);
                frame.extend_from_slice(&[proto, 0]);
                frame.extend_from_slice(&field.to_be_bytes());
                frame.extend_from_slice(&id.to_be_bytes());
                frame.extend_from_slice(payload);
                let payload_len = (frame.len() - l3 - 40) as u16;
                frame[l3 + 4..l3 + 6].copy_from_slice(&payload_len.to_be_bytes());
                frame
            })
            .collect()
    }

    /// The built IPv4 frame with its TCP checksum filled in.
    fn with_tcp_checksum(&self) -> Vec<u8> {
        let mut frame = self.build();
        let l3 = 14 + 4 * self.vlans.len();
        let l4 = l3 + usize::from(frame[l3] & 0x0f) * 4;
        if self.udp || frame.len() < l4 + 18 {
            return frame;
        }
        let len = (frame.len() - l4) as u32;
        let mut pseudo = 0u32;
        for pair in frame[l3 + 12..l3 + 20].chunks(2) {
            pseudo += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
        pseudo += 6 + len;
        let checksum = internet_checksum(&frame[l4..], pseudo);
        frame[l4 + 16..l4 + 18].copy_from_slice(&checksum.to_be_bytes());
        frame
    }

    fn tcp_header(&self) -> [u8; 20] {
        let mut tcp = [0u8; 20];
        tcp[0..2].copy_from_slice(&self.src_port.to_be_bytes());
        tcp[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = if self.syn { 0x02 } else { 0x10 };
        tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
        tcp
    }
}

/// The one's-complement sum of `bytes` (plus `initial`), as IPv4 and TCP
/// checksums want it.
fn internet_checksum(bytes: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for pair in bytes.chunks(2) {
        let high = pair[0];
        let low = pair.get(1).copied().unwrap_or(0);
        sum += u32::from(u16::from_be_bytes([high, low]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends raw frames out of `interface` (in the calling thread's namespace).
pub fn send_frames(interface: &str, frames: &[Vec<u8>]) -> io::Result<()> {
    let sender = RawSender::open(interface)?;
    for frame in frames {
        // A full transmit queue (ENOBUFS: frames sent faster than the veth
        // takes them, as under CI's load) is waited out, up to a second a
        // frame: every frame must go out for the counts the tests check.
        let mut waits = 0;
        loop {
            match sender.send(frame) {
                Err(error) if error.raw_os_error() == Some(libc::ENOBUFS) && waits < 1000 => {
                    waits += 1;
                    #[allow(clippy::disallowed_methods, reason = "sync sender, no runtime here")]
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                result => break result?,
            }
        }
    }
    Ok(())
}

/// An AF_PACKET socket bound for sending on one interface.
pub struct RawSender {
    fd: std::os::fd::OwnedFd,
    address: libc::sockaddr_ll,
}

impl RawSender {
    pub fn open(interface: &str) -> io::Result<Self> {
        use std::os::fd::FromRawFd;
        let name = std::ffi::CString::new(interface)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"))?;
        // SAFETY: NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: plain socket creation; the fd is owned right after.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd nobody else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data; zero is a valid start.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_ifindex = ifindex as i32;
        address.sll_halen = 6;
        address.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        Ok(Self { fd, address })
    }

    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: valid fd, buffer and address for the duration of the call.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&self.address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends `frame` `count` times with one `sendmmsg` call; returns how many
    /// went out. For floods, where per-packet syscalls would be the bottleneck.
    pub fn send_copies(&self, frame: &[u8], count: usize) -> io::Result<usize> {
        self.send_many(&vec![frame; count])
    }

    /// Sends every frame with one `sendmmsg` call; returns how many went out.
    pub fn send_many(&self, frames: &[&[u8]]) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        let mut iovs: Vec<libc::iovec> = frames
            .iter()
            .map(|frame| libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            })
            .collect();
        let header = |iov: &mut libc::iovec| {
            // SAFETY: msghdr is plain data; zero is a valid start.
            let mut msg: libc::mmsghdr = unsafe { std::mem::zeroed() };
            msg.msg_hdr.msg_name = (&self.address as *const libc::sockaddr_ll) as *mut libc::c_void;
            msg.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            msg.msg_hdr.msg_iov = iov;
            msg.msg_hdr.msg_iovlen = 1;
            msg
        };
        let mut messages: Vec<libc::mmsghdr> = iovs.iter_mut().map(header).collect();
        // SAFETY: every message points at its iovec, its frame and
        // `self.address`, all alive for the call; the kernel only reads them.
        let sent = unsafe {
            libc::sendmmsg(
                self.fd.as_raw_fd(),
                messages.as_mut_ptr(),
                u32::try_from(messages.len()).unwrap_or(u32::MAX),
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sent as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_syn_layout() {
        let frame = TcpFrame::syn(
            "10.0.0.2".parse().unwrap(),
            "10.0.0.1".parse().unwrap(),
            8080,
        )
        .build();
        assert_eq!(frame.len(), 14 + 20 + 20);
        assert_eq!(&frame[12..14], &[0x08, 0x00]);
        assert_eq!(frame[14], 0x45);
        assert_eq!(&frame[26..30], &[10, 0, 0, 2]);
        assert_eq!(&frame[36..38], &8080u16.to_be_bytes());
        assert_eq!(frame[47], 0x02);
    }

    #[test]
    fn qinq_with_options_and_v6_extensions() {
        let mut frame = TcpFrame::syn("10.0.0.2".parse().unwrap(), "10.0.0.1".parse().unwrap(), 80);
        frame.vlans = vec![(ETH_P_8021AD, 200), (ETH_P_8021Q, 300)];
        frame.ipv4_options = true;
        let bytes = frame.build();
        assert_eq!(&bytes[12..14], &[0x88, 0xa8]);
        assert_eq!(&bytes[16..18], &[0x81, 0x00]);
        assert_eq!(&bytes[20..22], &[0x08, 0x00]);
        assert_eq!(bytes[22], 0x46);

        let mut v6 = TcpFrame::syn("fd00::2".parse().unwrap(), "fd00::1".parse().unwrap(), 80);
        v6.ipv6_ext = vec![Ipv6Ext::DestinationOptions, Ipv6Ext::FirstFragment];
        let bytes = v6.build();
        assert_eq!(bytes[14 + 6], 60);
        assert_eq!(bytes[54], 44);
        assert_eq!(bytes[62], 6);
        assert_eq!(bytes.len(), 14 + 40 + 16 + 20);
    }
}
