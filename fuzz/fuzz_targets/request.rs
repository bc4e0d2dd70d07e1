//! Fuzzes what a node and a client decode from a stream: the frame header, a `Request` (as a
//! node certificate's frame), a `ClientRequest` (as a client's), and a `Response`.
#![no_main]

use cairn_proto::{
    check_peer_request, check_request, decode_body, decode_client_request, encode_frame,
    frame_body_len, Request, Response,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(header) = data.first_chunk::<4>() {
        let _ = frame_body_len(*header);
    }
    if let Ok(req) = decode_body::<Request>(data) {
        match &req {
            Request::Peer(p) => drop(check_peer_request(p)),
            other => drop(check_request(other)),
        }
        // Whatever decodes encodes back to a frame that decodes to the same request.
        let frame = encode_frame(&req).expect("a decoded request encodes");
        assert_eq!(decode_body::<Request>(&frame[4..]).as_ref(), Ok(&req));
    }
    if let Ok(req) = decode_client_request(data) {
        let req = Request::from(req);
        assert!(!matches!(req, Request::Peer(_)));
        let _ = check_request(&req);
    }
    let _ = decode_body::<Response>(data);
});
