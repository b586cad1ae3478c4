//! The AWS configuration S3 and CloudFront clients share: credentials and region
//! from the standard chain, retries, timeouts, and AWS_CA_BUNDLE.

use std::path::PathBuf;
use std::time::Duration;

use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
use aws_sdk_s3::config::SharedHttpClient;
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
use aws_smithy_types::error::display::DisplayErrorContext;

/// How long a connection to an endpoint may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Region used when neither the command line nor the AWS configuration names one.
const DEFAULT_REGION: &str = "us-east-1";

/// Which profile of which credentials file, where the defaults (AWS_PROFILE,
/// ~/.aws/credentials) do not do: a mount from fstab or systemd has no HOME.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    pub name: Option<String>,
    pub credentials_file: Option<PathBuf>,
}

/// The standard AWS configuration chain (environment, profile, web identity,
/// instance metadata), in `region` if given.
pub async fn load(region: Option<String>, profile: &Profile) -> Result<SdkConfig, String> {
    let region = RegionProviderChain::first_try(region.map(aws_config::Region::new))
        .or_default_provider()
        .or_else(DEFAULT_REGION);
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .read_timeout(Duration::from_secs(60))
                .build(),
        );
    if let Some(name) = &profile.name {
        loader = loader.profile_name(name);
    }
    if let Some(file) = &profile.credentials_file {
        loader = loader.profile_files(
            EnvConfigFiles::builder()
                .include_default_config_file(true)
                .with_file(EnvConfigFileKind::Credentials, file)
                .build(),
        );
    }
    if let Some(client) = http_client_with_ca_bundle()? {
        loader = loader.http_client(client);
    }
    Ok(loader.load().await)
}

/// Users behind TLS-intercepting proxies point `AWS_CA_BUNDLE` at their CA file, as
/// with the AWS CLI. The SDK does not read it itself, so trust its certificates in
/// addition to the system roots. Plain-http endpoints are unaffected.
fn http_client_with_ca_bundle() -> Result<Option<SharedHttpClient>, String> {
    let Some(path) = std::env::var_os("AWS_CA_BUNDLE").filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let pem = std::fs::read(&path).map_err(|e| {
        format!(
            "cannot read AWS_CA_BUNDLE {}: {e}",
            std::path::Path::new(&path).display()
        )
    })?;
    let context = TlsContext::builder()
        .with_trust_store(TrustStore::default().with_pem_certificate(pem))
        .build()
        .map_err(|e| format!("AWS_CA_BUNDLE: {e}"))?;
    let client = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .tls_context(context)
        .build_https();
    Ok(Some(client))
}

/// An SDK error with its causes' own words, on one line: each cause once, no
/// `Debug` forms (those go to the debug log, see [`full_chain`]).
pub fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut said: Vec<String> = Vec::new();
    for e in std::iter::successors(Some(err), |e| (*e).source()) {
        let text = e.to_string().replace('\n', " ");
        // Wrappers often repeat their cause's words.
        if !text.is_empty() && !said.iter().any(|s| s.contains(&text)) {
            said.push(text);
        }
    }
    said.join(": ")
}

/// Everything the SDK says of an error, `Debug` forms included, on one line: for
/// the debug log.
pub fn full_chain(err: &dyn std::error::Error) -> String {
    DisplayErrorContext(err).to_string().replace('\n', " ")
}
