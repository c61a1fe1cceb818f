//! `things-receiver doctor URL`: prints each check's verdict and the fix for each failure;
//! exits non-zero if any check failed.

use crate::config::DoctorArgs;
use crate::doctor::{self, Options, Report, Status};

/// Returns whether every check passed (warnings and skips allowed).
pub async fn run(args: DoctorArgs) -> anyhow::Result<bool> {
    let options = Options {
        url: args.url,
        plug: args.plug,
        secret: args.secret,
        ca_file: args.ca_file,
        timeout: args.timeout,
    };
    let report = doctor::run(&options).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(report.ok)
}

fn render(report: &Report) -> String {
    let mut out = format!("Checking {} as KPN Things will reach it\n", report.url);
    for finding in &report.findings {
        let label = match finding.status {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        };
        out.push_str(&format!(
            "  {label}  {:<11} {}\n",
            finding.check, finding.detail
        ));
        if let Some(fix) = &finding.fix {
            out.push_str(&format!("        {:<11} fix: {fix}\n", ""));
        }
    }
    let failed = report
        .findings
        .iter()
        .filter(|f| f.status == Status::Fail)
        .count();
    if failed == 0 {
        out.push_str("All checks passed.\n");
    } else {
        out.push_str(&format!(
            "{failed} check(s) failed: KPN Things will not deliver until they are fixed.\n"
        ));
    }
    out
}
