//! A plain Pingora reverse proxy with default settings: every request goes to one upstream,
//! untouched. It is what the framework alone costs, a contender in `benches/compare.sh`.
//!
//!   passthrough LISTEN UPSTREAM THREADS
//!
//! Run by `cargo bench` (with `--bench`) or `cargo test --all-targets` (without arguments), it
//! has nothing to measure and exits.

use async_trait::async_trait;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::Result;
use pingora_proxy::{ProxyHttp, Session};

struct Passthrough {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Passthrough {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, threads] = args.as_slice() else {
        if !args.is_empty() && !args.iter().any(|a| a == "--bench") {
            eprintln!("usage: passthrough LISTEN UPSTREAM THREADS");
            std::process::exit(2);
        }
        println!("passthrough: a contender of benches/compare.sh, nothing to run here");
        return;
    };
    let Ok(threads) = threads.parse() else {
        eprintln!("THREADS: not a number: {threads}");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut proxy = pingora_proxy::http_proxy_service(
        &server.configuration,
        Passthrough {
            upstream: upstream.clone(),
        },
    );
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever();
}
