//! A caller's request body on its way to the agent: the one pump behind
//! both the HTTPS gateway (a hyper body) and the `Proxy` call (gRPC
//! messages).
//!
//! The pump reads a piece, checks the running total against the hub's body
//! limit, cuts the piece into frame-sized chunks and sends them on the
//! request stream's bounded frame channel, so a slow agent holds back the
//! caller through that channel and memory stays at its capacity.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use ferry::frame;
use ferry::proto::v1::{End, ErrorCode, HubFrame, hub_frame};

use crate::gateway::error_frame;
use crate::metrics::FlowMeter;
use crate::registry::FrameTx;

/// One step of a caller's request body.
#[derive(Debug)]
pub(crate) enum Piece {
    /// More of the body.
    Data(Bytes),
    /// The body is complete.
    End,
    /// The body cannot go on: the agent gets an error frame with this code
    /// and message instead of `End`.
    Failed(ErrorCode, &'static str),
}

/// Where a request body comes from.
pub(crate) trait BodySource: Send {
    /// The next piece; called again only after `Piece::Data`.
    fn next_piece(&mut self) -> impl Future<Output = Piece> + Send;
}

/// Streams `source` to the agent in frame-sized chunks, then `End`. Past
/// `max` bytes it sets `too_large` (so the response says 413) and sends a
/// `Limit` error frame instead; a failed source sends its error frame.
/// `counted` hears of every piece forwarded (the request's byte count);
/// `flow`, when given, counts the sends that had to wait for the agent.
/// Returns early, without a word, when the request stream is gone.
pub(crate) async fn pump(
    mut source: impl BodySource,
    tx: FrameTx,
    max: u64,
    too_large: Arc<AtomicBool>,
    mut counted: impl FnMut(usize) + Send,
    flow: Option<FlowMeter>,
) {
    let mut total: u64 = 0;
    let last = loop {
        let data = match source.next_piece().await {
            Piece::Data(d) => d,
            Piece::End => break HubFrame { frame: Some(hub_frame::Frame::End(End::default())) },
            Piece::Failed(code, message) => break error_frame(code, message),
        };
        total += data.len() as u64;
        if total > max {
            too_large.store(true, Ordering::Relaxed);
            break error_frame(ErrorCode::Limit, "request body too large");
        }
        counted(data.len());
        for chunk in frame::chunks(data) {
            let body = Ok(HubFrame { frame: Some(hub_frame::Frame::Body(chunk)) });
            let sent = match &flow {
                Some(flow) => flow.send(&tx, body).await.is_ok(),
                None => tx.send(body).await.is_ok(),
            };
            if !sent {
                return;
            }
        }
    };
    let _ = tx.send(Ok(last)).await;
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use ferry::limits::MAX_BODY_CHUNK;
    use ferry::proto::v1::HubFrame;
    use tokio::sync::mpsc;

    use super::*;

    struct Script(VecDeque<Piece>);

    impl BodySource for Script {
        async fn next_piece(&mut self) -> Piece {
            self.0.pop_front().unwrap_or(Piece::Failed(ErrorCode::Protocol, "read past the end"))
        }
    }

    async fn run(pieces: Vec<Piece>, max: u64) -> (Vec<hub_frame::Frame>, bool) {
        let (tx, mut rx) = mpsc::channel(4);
        let flag = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(pump(Script(pieces.into()), tx, max, flag.clone(), |_| {}, None));
        let mut frames = Vec::new();
        while let Some(f) = rx.recv().await {
            let HubFrame { frame: Some(f) } = f.expect("frame") else { panic!("empty frame") };
            frames.push(f);
        }
        task.await.expect("pump");
        (frames, flag.load(Ordering::Relaxed))
    }

    fn body_bytes(frames: &[hub_frame::Frame]) -> Vec<u8> {
        frames
            .iter()
            .filter_map(|f| match f {
                hub_frame::Frame::Body(b) => Some(b.to_vec()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    #[tokio::test]
    async fn body_arrives_in_frame_sized_chunks_then_end() {
        let big = Bytes::from(vec![7u8; MAX_BODY_CHUNK * 2 + 5]);
        let (frames, too_large) = run(
            vec![Piece::Data(Bytes::from_static(b"abc")), Piece::Data(big.clone()), Piece::End],
            u64::MAX,
        )
        .await;
        assert!(!too_large);
        let bodies: Vec<usize> = frames
            .iter()
            .filter_map(|f| match f {
                hub_frame::Frame::Body(b) => Some(b.len()),
                _ => None,
            })
            .collect();
        assert_eq!(bodies, vec![3, MAX_BODY_CHUNK, MAX_BODY_CHUNK, 5]);
        let mut want = b"abc".to_vec();
        want.extend_from_slice(&big);
        assert_eq!(body_bytes(&frames), want);
        assert!(matches!(frames.last(), Some(hub_frame::Frame::End(_))));
    }

    #[tokio::test]
    async fn past_the_limit_the_agent_gets_a_limit_error_and_nothing_more() {
        let (frames, too_large) = run(
            vec![
                Piece::Data(Bytes::from_static(b"12345")),
                Piece::Data(Bytes::from_static(b"6789")),
                Piece::Data(Bytes::from_static(b"never read")),
            ],
            8,
        )
        .await;
        assert!(too_large);
        assert_eq!(body_bytes(&frames), b"12345");
        match frames.last() {
            Some(hub_frame::Frame::Error(e)) => assert_eq!(e.code, ErrorCode::Limit as i32),
            other => panic!("want a Limit error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_failed_body_ends_in_its_error_frame_not_end() {
        let (frames, too_large) = run(
            vec![Piece::Data(Bytes::from_static(b"ab")), Piece::Failed(ErrorCode::Cancelled, "gone")],
            u64::MAX,
        )
        .await;
        assert!(!too_large);
        assert_eq!(body_bytes(&frames), b"ab");
        match frames.last() {
            Some(hub_frame::Frame::Error(e)) => {
                assert_eq!((e.code, e.message.as_str()), (ErrorCode::Cancelled as i32, "gone"));
            }
            other => panic!("want a Cancelled error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn stops_quietly_when_the_stream_is_gone() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let pieces = vec![Piece::Data(Bytes::from_static(b"x")), Piece::End];
        // Returns instead of reading on (the script would fail past its end).
        pump(Script(pieces.into()), tx, u64::MAX, Arc::new(AtomicBool::new(false)), |_| {}, None).await;
    }
}
