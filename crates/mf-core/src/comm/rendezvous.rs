//! A TCP rendezvous: rank 0 listens at `MASTER_ADDR:MASTER_PORT`, every other rank connects,
//! and once all have joined rank 0 sends each of them the same payload (the NCCL unique id).
//!
//! It needs no GPU, so it is tested on CPU. Both sides give up with a clear error after a
//! timeout: a rank that never comes makes rank 0 fail naming the missing ranks, and rank 0 not
//! coming makes the others fail naming the address.
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::error::{MfError, Result};

const HELLO: &[u8; 4] = b"MFRV";
const FAIL: &[u8; 4] = b"MFER";

fn err(msg: impl std::fmt::Display) -> MfError {
    MfError::Comm(format!("rendezvous: {msg}"))
}

/// `MASTER_ADDR:MASTER_PORT` from the environment (torchrun's variables).
pub fn master_addr_from_env() -> Result<String> {
    let get = |k: &str| {
        std::env::var(k).map_err(|_| {
            err(format!(
                "{k} is not set; launch with `mf launch` or set MASTER_ADDR and MASTER_PORT"
            ))
        })
    };
    let (host, port) = (get("MASTER_ADDR")?, get("MASTER_PORT")?);
    port.parse::<u16>()
        .map_err(|_| err(format!("MASTER_PORT '{port}' is not a port number")))?;
    Ok(format!("{host}:{port}"))
}

/// Rank 0's side of the rendezvous: a bound listener waiting for the other ranks.
pub struct RendezvousServer {
    listener: TcpListener,
    world: usize,
}

impl RendezvousServer {
    /// Listens at `addr` (port 0 picks a free port) for a group of `world` ranks.
    pub fn bind(addr: impl ToSocketAddrs + std::fmt::Debug, world: usize) -> Result<Self> {
        if world == 0 {
            return Err(err("world size must be at least 1"));
        }
        let listener = TcpListener::bind(&addr)
            .map_err(|e| err(format!("rank 0 cannot listen at {addr:?}: {e}")))?;
        Ok(RendezvousServer { listener, world })
    }

    /// The address actually bound (to learn the port after binding port 0).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| err(format!("listener address: {e}")))
    }

    /// Waits up to `timeout` for ranks `1..world` to join, then sends each `payload`.
    pub fn serve(self, payload: &[u8], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut joined: Vec<Option<TcpStream>> = (0..self.world).map(|_| None).collect();
        let io = |e: std::io::Error| err(format!("listener: {e}"));
        self.listener.set_nonblocking(true).map_err(io)?;
        let outcome = (|| {
            while joined.iter().skip(1).any(Option::is_none) {
                let now = Instant::now();
                if now >= deadline {
                    let missing: Vec<usize> =
                        (1..self.world).filter(|&r| joined[r].is_none()).collect();
                    return Err(err(format!(
                        "rank 0 timed out after {timeout:.1?} waiting for rank(s) {missing:?} \
                         of {} to connect",
                        self.world
                    )));
                }
                let mut stream = match self.listener.accept() {
                    Ok((s, _)) => s,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Err(e) => return Err(io(e)),
                };
                stream.set_nonblocking(false).map_err(io)?;
                stream
                    .set_read_timeout(Some(
                        deadline
                            .saturating_duration_since(now)
                            .max(Duration::from_millis(1)),
                    ))
                    .map_err(io)?;
                let mut hello = [0u8; 12];
                if stream.read_exact(&mut hello).is_err() || &hello[..4] != HELLO {
                    // Not one of ours (a port scanner, a stale client): ignore it.
                    continue;
                }
                let rank = u32::from_le_bytes(hello[4..8].try_into().unwrap_or_default()) as usize;
                let world =
                    u32::from_le_bytes(hello[8..12].try_into().unwrap_or_default()) as usize;
                let problem = if world != self.world {
                    Some(format!(
                        "rank {rank} was started with world size {world}, rank 0 with {}",
                        self.world
                    ))
                } else if rank == 0 || rank >= self.world {
                    Some(format!(
                        "a client claims rank {rank}, expected 1..{}",
                        self.world
                    ))
                } else if joined[rank].is_some() {
                    Some(format!("rank {rank} joined twice"))
                } else {
                    None
                };
                if let Some(p) = problem {
                    let _ = send_frame(&mut stream, FAIL, p.as_bytes());
                    return Err(err(p));
                }
                joined[rank] = Some(stream);
            }
            Ok(())
        })();
        // On failure, tell the ranks that did come, so they stop waiting at once.
        let (magic, body) = match &outcome {
            Ok(()) => (HELLO, payload.to_vec()),
            Err(e) => (FAIL, e.to_string().into_bytes()),
        };
        for (rank, s) in joined.iter_mut().enumerate() {
            if let Some(s) = s {
                let sent = send_frame(s, magic, &body);
                if outcome.is_ok() {
                    sent.map_err(|e| err(format!("sending to rank {rank}: {e}")))?;
                }
            }
        }
        outcome
    }
}

fn send_frame(s: &mut TcpStream, magic: &[u8; 4], body: &[u8]) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(8 + body.len());
    frame.extend_from_slice(magic);
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(body);
    s.write_all(&frame)?;
    s.flush()
}

/// A non-zero rank's side: connects to rank 0 at `addr` (retrying until it listens) and
/// returns the payload rank 0 serves, or fails after `timeout`.
pub fn rendezvous_join(
    addr: &str,
    rank: usize,
    world: usize,
    timeout: Duration,
) -> Result<Vec<u8>> {
    if rank == 0 || rank >= world {
        return Err(err(format!(
            "rank {rank} cannot join a group of {world} (rank 0 serves, others join)"
        )));
    }
    let deadline = Instant::now() + timeout;
    let targets: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| err(format!("cannot resolve master address {addr}: {e}")))?
        .collect();
    let timed_out = || {
        err(format!(
            "rank {rank} timed out after {timeout:.1?} waiting for rank 0 at {addr}"
        ))
    };
    let mut stream = 'connect: loop {
        for t in &targets {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out());
            }
            if let Ok(s) = TcpStream::connect_timeout(t, left) {
                break 'connect s;
            }
        }
        // Rank 0 may not be listening yet.
        std::thread::sleep(Duration::from_millis(50));
    };
    let io = |e: std::io::Error| err(format!("rank {rank} talking to rank 0 at {addr}: {e}"));
    let mut hello = Vec::with_capacity(12);
    hello.extend_from_slice(HELLO);
    hello.extend_from_slice(&(rank as u32).to_le_bytes());
    hello.extend_from_slice(&(world as u32).to_le_bytes());
    stream.write_all(&hello).map_err(io)?;
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(timed_out());
    }
    stream.set_read_timeout(Some(left)).map_err(io)?;
    let mut head = [0u8; 8];
    stream.read_exact(&mut head).map_err(|e| match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => timed_out(),
        ErrorKind::UnexpectedEof => err(format!(
            "rank 0 at {addr} closed the connection before sending the id (did it fail?)"
        )),
        _ => io(e),
    })?;
    let len = u32::from_le_bytes(head[4..8].try_into().unwrap_or_default()) as usize;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).map_err(io)?;
    if &head[..4] == FAIL {
        return Err(err(format!(
            "rank 0 aborted: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    if &head[..4] != HELLO {
        return Err(err(format!("{addr} is not a mindformers rendezvous")));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(world: usize) -> (RendezvousServer, String) {
        let s = RendezvousServer::bind("127.0.0.1:0", world).unwrap();
        let addr = s.local_addr().unwrap().to_string();
        (s, addr)
    }

    #[test]
    fn every_rank_gets_the_payload() {
        let (srv, addr) = server(4);
        let t = Duration::from_secs(10);
        std::thread::scope(|s| {
            let joins: Vec<_> = (1..4)
                .map(|r| {
                    let addr = addr.clone();
                    s.spawn(move || rendezvous_join(&addr, r, 4, t))
                })
                .collect();
            srv.serve(b"the-unique-id", t).unwrap();
            for j in joins {
                assert_eq!(j.join().unwrap().unwrap(), b"the-unique-id");
            }
        });
    }

    #[test]
    fn clients_retry_until_rank0_listens() {
        // Reserve a port, release it, and start the server late.
        let (srv, addr) = server(2);
        drop(srv);
        let a2 = addr.clone();
        let h = std::thread::spawn(move || rendezvous_join(&a2, 1, 2, Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(300));
        let srv = RendezvousServer::bind(addr.as_str(), 2).unwrap();
        srv.serve(&[1, 2, 3], Duration::from_secs(10)).unwrap();
        assert_eq!(h.join().unwrap().unwrap(), vec![1, 2, 3]);
    }

    #[test]
    fn a_missing_rank_times_out_and_names_it() {
        let (srv, addr) = server(3);
        let t = Duration::from_millis(800);
        let start = Instant::now();
        let h = std::thread::spawn(move || rendezvous_join(&addr, 1, 3, Duration::from_secs(10)));
        let e = srv.serve(b"id", t).unwrap_err().to_string();
        assert!(e.contains("[2]"), "{e}");
        // The rank that did come is told at once rather than waiting out its own timeout.
        let e1 = h.join().unwrap().unwrap_err().to_string();
        assert!(e1.contains("rank 0 aborted"), "{e1}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn no_rank0_times_out() {
        let (srv, addr) = server(2);
        drop(srv);
        let start = Instant::now();
        let e = rendezvous_join(&addr, 1, 2, Duration::from_millis(500))
            .unwrap_err()
            .to_string();
        assert!(e.contains("timed out") && e.contains(&addr), "{e}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn world_size_mismatch_is_reported() {
        let (srv, addr) = server(2);
        let h = std::thread::spawn(move || rendezvous_join(&addr, 1, 3, Duration::from_secs(10)));
        let e = srv
            .serve(b"id", Duration::from_secs(10))
            .unwrap_err()
            .to_string();
        assert!(e.contains("world size 3"), "{e}");
        let e1 = h.join().unwrap().unwrap_err().to_string();
        assert!(e1.contains("world size 3"), "{e1}");
    }
}
