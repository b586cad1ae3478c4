//! Why a request got no answer from the server, in a person's words: no
//! credentials, a refused connection, a host name that does not resolve, a
//! certificate not trusted, a timeout. The SDK reports these as a chain of
//! errors whose `Debug` form is what a user saw before; the whole chain still
//! goes to the debug log.

use std::error::Error;

use aws_credential_types::provider::error::CredentialsError;

/// What stopped a request before the server could answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoAnswer {
    /// No credentials to sign with: not worth trying again.
    NoCredentials(String),
    /// The network, the name, TLS or a timeout: may pass.
    Unreachable(String),
}

/// Where the standard chain looks for credentials, for the message that none
/// were found.
const LOOKED_IN: &str = "the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), \
     the profile in ~/.aws/credentials and ~/.aws/config (AWS_PROFILE, --profile, \
     --credentials-file), a web identity token (AWS_WEB_IDENTITY_TOKEN_FILE), \
     container and instance metadata";

/// Sort the chain of causes of a request that got no answer.
pub fn classify(err: &(dyn Error + 'static)) -> NoAnswer {
    tracing::debug!("request failed: {}", crate::aws::full_chain(err));
    let chain: Vec<&(dyn Error + 'static)> =
        std::iter::successors(Some(err), |e| (*e).source()).collect();
    if let Some(creds) = chain
        .iter()
        .find_map(|e| e.downcast_ref::<CredentialsError>())
    {
        return NoAnswer::NoCredentials(credentials(creds));
    }
    NoAnswer::Unreachable(network(&chain))
}

fn credentials(err: &CredentialsError) -> String {
    match err {
        CredentialsError::CredentialsNotLoaded(_) => {
            format!("no AWS credentials found; looked in {LOOKED_IN}")
        }
        CredentialsError::ProviderTimedOut(after) => format!(
            "no AWS credentials: the credentials provider did not answer within {} s",
            after.timeout_duration().as_secs()
        ),
        other => format!(
            "cannot load AWS credentials: {}",
            deepest(other).trim_end_matches('.')
        ),
    }
}

/// The network's reason, from the innermost cause that says something.
fn network(chain: &[&(dyn Error + 'static)]) -> String {
    let io = chain
        .iter()
        .rev()
        .find_map(|e| e.downcast_ref::<std::io::Error>());
    let texts: Vec<String> = chain.iter().map(|e| e.to_string()).collect();
    let any = |needle: &str| {
        texts
            .iter()
            .any(|t| t.to_ascii_lowercase().contains(needle))
    };
    if any("dns error") || any("failed to lookup address") {
        let why = io.map(|e| e.to_string()).unwrap_or_default();
        let why = why
            .strip_prefix("failed to lookup address information: ")
            .unwrap_or(&why);
        return format!("cannot resolve the host name ({why})");
    }
    if any("certificate") {
        return format!(
            "the server's TLS certificate is not trusted ({}); if your own CA signed it, \
             set AWS_CA_BUNDLE to that CA's PEM file",
            texts.last().map(String::as_str).unwrap_or_default()
        );
    }
    if any("corrupt message") || any("handshake") || any("tls") {
        return format!(
            "TLS handshake failed ({}); is the endpoint https?",
            texts.last().map(String::as_str).unwrap_or_default()
        );
    }
    if let Some(io) = io {
        use std::io::ErrorKind::*;
        let said = match io.kind() {
            ConnectionRefused => Some("connection refused"),
            ConnectionReset => Some("connection reset"),
            ConnectionAborted => Some("connection aborted"),
            TimedOut => Some("timed out"),
            HostUnreachable => Some("host unreachable"),
            NetworkUnreachable => Some("network unreachable"),
            _ => None,
        };
        return said.map_or_else(|| io.to_string(), str::to_string);
    }
    if any("timeout") || any("timed out") {
        return "timed out".into();
    }
    deepest(chain[0])
}

/// The innermost cause's own words.
fn deepest(err: &(dyn Error + 'static)) -> String {
    std::iter::successors(Some(err), |e| (*e).source())
        .last()
        .map(|e| e.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Wrapped {
        text: &'static str,
        #[source]
        source: Box<dyn Error + Send + Sync>,
    }

    fn wrap(text: &'static str, source: impl Error + Send + Sync + 'static) -> Wrapped {
        Wrapped {
            text,
            source: Box::new(source),
        }
    }

    #[test]
    fn a_refused_connection_says_so() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let err = wrap("dispatch failure", wrap("io error", io));
        assert_eq!(
            classify(&err),
            NoAnswer::Unreachable("connection refused".into())
        );
    }

    #[test]
    fn a_name_that_does_not_resolve_says_so() {
        let io = std::io::Error::other(
            "failed to lookup address information: Name or service not known",
        );
        let err = wrap("dispatch failure", wrap("dns error", io));
        assert_eq!(
            classify(&err),
            NoAnswer::Unreachable(
                "cannot resolve the host name (Name or service not known)".into()
            )
        );
    }

    #[test]
    fn missing_credentials_say_where_they_were_looked_for() {
        let creds = CredentialsError::not_loaded("no credentials found in chain");
        let err = wrap("dispatch failure", creds);
        let NoAnswer::NoCredentials(text) = classify(&err) else {
            panic!("not a credentials error");
        };
        assert!(text.starts_with("no AWS credentials found; looked in the environment"));
        assert!(!text.contains('\n'));
    }
}
