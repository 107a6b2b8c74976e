//! The smallest Pingora HTTP server: every request answered with a static `200` and the
//! origin's small JSON body, no upstream at all. It is the framework's floor, measured next
//! to nginx's `return 200` by `benches/load/instructions.sh` (issue 17): what this costs
//! above nginx is Pingora's HTTP/1 server and runtime; what `bare_pingora` costs above this
//! is its proxy loop and upstream connection.
//!
//! `cargo run --release --example bare_serve -- LISTEN` (default 127.0.0.1:18094).
//! One worker thread, work stealing off, as Switchboard runs in the load harness.

use async_trait::async_trait;
use http::{header, Response};
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;

/// The origin's body in `benches/load/setup.sh`, byte for byte, so both floors write the same.
const BODY: &[u8] = br#"{"ok":true,"id":"call_0123456789"}"#;

struct Static;

#[async_trait]
impl ServeHttp for Static {
    async fn response(&self, _session: &mut ServerSession) -> Response<Vec<u8>> {
        // Content-Length keeps the connection alive (wrk reuses it, as it does with nginx);
        // the request has no body to drain. Nothing here can fail at run time, but the
        // builder is fallible, so a failure answers an empty 200 rather than panicking.
        Response::builder()
            .status(200)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, BODY.len())
            .body(BODY.to_vec())
            .unwrap_or_default()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18094".into());
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = Service::new("bare_serve".into(), HttpServer::new_app(Static));
    service.add_tcp(&listen);
    server.add_service(service);
    server.run_forever()
}
