//! A DNS client for the tests, built on hickory-proto (an implementation independent of ours).

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

/// A query for `name`, with EDNS0 announcing `edns` bytes when given.
pub fn query(name: &str, rtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::query();
    m.add_query(Query::query(Name::from_str(name).unwrap(), rtype));
    m.metadata.recursion_desired = true;
    if let Some(p) = edns {
        let mut e = Edns::new();
        e.set_max_payload(p);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

pub async fn udp_raw(server: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    udp_raw_from([127, 0, 0, 1].into(), server, bytes).await
}

/// [`udp_raw`] from a socket bound to `source` (any of 127.0.0.0/8 on Linux).
pub async fn udp_raw_from(source: IpAddr, server: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind(SocketAddr::new(source, 0)).await.unwrap();
    sock.send_to(bytes, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(Duration::from_secs(3), sock.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

pub async fn udp(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    let bytes = udp_raw(server, &query(name, rtype, None))
        .await
        .expect("an answer");
    Message::from_vec(&bytes).unwrap()
}

pub async fn tcp_raw(server: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let s = TcpStream::connect(server).await.unwrap();
    tcp_exchange(s, bytes).await
}

/// [`tcp_raw`] from a connection bound to `source`.
pub async fn tcp_raw_from(source: IpAddr, server: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(source, 0)).unwrap();
    tcp_exchange(sock.connect(server).await.unwrap(), bytes).await
}

async fn tcp_exchange(mut s: TcpStream, bytes: &[u8]) -> Vec<u8> {
    s.write_all(&(bytes.len() as u16).to_be_bytes())
        .await
        .unwrap();
    s.write_all(bytes).await.unwrap();
    let len = s.read_u16().await.unwrap();
    let mut buf = vec![0u8; usize::from(len)];
    s.read_exact(&mut buf).await.unwrap();
    buf
}

pub async fn tcp(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    Message::from_vec(&tcp_raw(server, &query(name, rtype, None)).await).unwrap()
}
