//! The start banner: where the server listens, what it serves, where its data and key are,
//! and the next commands to run.

use std::net::SocketAddr;
use std::path::Path;

use crate::config::ServeArgs;
use crate::ingest::verify::destinations::SecretCache;
use crate::store::Database;

use super::tls_setup::CertSource;

// Everything the banner names comes from a different part of the start.
#[allow(clippy::too_many_arguments)]
pub(super) fn print_banner(
    bound: SocketAddr,
    args: &ServeArgs,
    database: &Database,
    cert: &CertSource,
    data_dir: &Path,
    key_origin: &str,
    secrets: &SecretCache,
    metrics: Option<SocketAddr>,
    device_listener: Option<SocketAddr>,
) {
    let scheme = if args.plain_http { "http" } else { "https" };
    let host = if bound.ip().is_unspecified() {
        "localhost".to_owned()
    } else {
        bound.ip().to_string()
    };
    let port = bound.port();
    let data_dir = data_dir.display();
    let (bound_count, pending, _) = secrets.stats();
    let mut lines = vec![
        format!(
            "things-receiver {} listening on {scheme}://{bound}",
            env!("CARGO_PKG_VERSION")
        ),
        format!("  ingest:      POST {scheme}://{host}:{port}/ingest/kpn"),
        format!(
            "  devices:     POST {scheme}://{host}:{port}/ingestion/ip/senml/v1 (and /ingestion/m2m/senml/v1)"
        ),
        format!("  api:         {scheme}://{host}:{port}/api/v1/measurements"),
        format!("  console:     {scheme}://{host}:{port}/console (sign in with an API key)"),
        format!("  health:      {scheme}://{host}:{port}/healthz, /readyz"),
        match metrics {
            Some(addr) => format!("  metrics:     http://{addr}/metrics (no key: keep it private)"),
            None => format!("  metrics:     {scheme}://{host}:{port}/metrics (read key)"),
        },
        format!("  database:    {}", database.description()),
        format!(
            "  secret key:  {key_origin} (keep it: without it stored secrets cannot be opened)"
        ),
        format!("  destinations: {bound_count} active, {pending} pending"),
    ];
    if let Some(addr) = device_listener {
        lines.insert(
            3,
            format!("  m2m devices: POST http://{addr}/ingestion/m2m/senml/v1 (plain HTTP: device doors only)"),
        );
    }
    match cert {
        CertSource::Files(paths) => {
            for path in paths {
                lines.push(format!(
                    "  certificate: {} (reloaded on change or SIGHUP)",
                    path.display()
                ));
            }
        }
        CertSource::Acme(domains) => lines.push(format!(
            "  certificate: ACME for {} (TLS-ALPN-01 on this port; cached under {data_dir}/acme)",
            domains.join(", ")
        )),
        CertSource::Development(path) => lines.push(format!(
            "  certificate: {} (DEV ONLY: self-signed; KPN Things requires a certificate from a public CA)",
            path.display()
        )),
        CertSource::None => lines.push(
            "  tls:         none (--plain-http: run behind a TLS-terminating proxy only)".to_owned(),
        ),
    }
    if let Some(cluster) = database.cluster() {
        if cluster.relocated {
            lines.push(format!(
                "  cluster:     {} (the postgres user cannot reach {data_dir}; recorded in {data_dir}/{})",
                cluster.dir.display(),
                crate::store::embedded::LOCATION_FILE
            ));
        }
        lines.push(format!(
            "  DEV ONLY: embedded PostgreSQL in {}; set DATABASE_URL for production",
            cluster.dir.display()
        ));
    }
    lines.push(String::new());
    lines.push("Next steps:".to_owned());
    lines.push(format!(
        "  things-receiver --data-dir {data_dir} destinations add --name my-destination"
    ));
    lines.push(format!(
        "  things-receiver --data-dir {data_dir} api-keys create --name dashboard --scope read"
    ));
    lines.push("Stop with Ctrl-C (or SIGTERM): requests in flight finish first.".to_owned());
    println!("{}", lines.join("\n"));
}
