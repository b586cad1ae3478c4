//! The CloudFront API, as the invalidation queue uses it, over aws-sdk-cloudfront.

use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_cloudfront::Client;
use aws_sdk_cloudfront::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_cloudfront::types::{InvalidationBatch, Paths};

use crate::aws::one_line;
use crate::no_answer::{self, NoAnswer};

/// CloudFront signs in this region whatever the region of the bucket.
const CLOUDFRONT_REGION: &str = "us-east-1";
/// One try of a request; the queue retries itself, with its own backoff.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CdnError {
    #[error("the distribution does not exist")]
    NoSuchDistribution,
    #[error("access denied ({0})")]
    AccessDenied(String),
    /// Throttled, too many invalidations in progress, a server error, or no
    /// answer: the same request may succeed later.
    #[error("{0}")]
    Transient(String),
    /// Refused for good.
    #[error("{0}")]
    Rejected(String),
}

impl CdnError {
    pub fn is_transient(&self) -> bool {
        matches!(self, CdnError::Transient(_))
    }
}

/// An invalidation CloudFront accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub id: String,
    pub in_progress: bool,
}

/// What the queue asks of the CDN.
#[async_trait]
pub trait Cdn: Send + Sync {
    /// Create one invalidation of `paths`; `reference` makes it unique.
    async fn invalidate(&self, paths: Vec<String>, reference: String)
    -> Result<Accepted, CdnError>;
    /// Is invalidation `id` still in progress?
    async fn in_progress(&self, id: &str) -> Result<bool, CdnError>;
}

/// One distribution of CloudFront (or of an endpoint speaking its API).
pub struct CloudFront {
    client: Client,
    distribution_id: String,
}

impl CloudFront {
    /// `endpoint_url`: another endpoint than AWS's. AWS_ENDPOINT_URL is not used:
    /// it names the S3 server.
    pub fn new(
        sdk_config: &SdkConfig,
        endpoint_url: Option<String>,
        distribution_id: &str,
    ) -> Self {
        let mut builder = aws_sdk_cloudfront::config::Builder::from(sdk_config);
        builder.set_endpoint_url(endpoint_url);
        let config = builder
            .region(aws_config::Region::new(CLOUDFRONT_REGION))
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            )
            .build();
        Self {
            client: Client::from_conf(config),
            distribution_id: distribution_id.to_string(),
        }
    }

    /// Does the distribution exist, and may these credentials read it?
    pub async fn check(&self) -> Result<(), CdnError> {
        self.client
            .get_distribution()
            .id(&self.distribution_id)
            .send()
            .await
            .map(|_| ())
            .map_err(classify)
    }
}

#[async_trait]
impl Cdn for CloudFront {
    async fn invalidate(
        &self,
        paths: Vec<String>,
        reference: String,
    ) -> Result<Accepted, CdnError> {
        let quantity = i32::try_from(paths.len())
            .map_err(|_| CdnError::Rejected(format!("{} paths", paths.len())))?;
        let build = |e: aws_sdk_cloudfront::error::BuildError| CdnError::Rejected(e.to_string());
        let batch = InvalidationBatch::builder()
            .paths(
                Paths::builder()
                    .quantity(quantity)
                    .set_items(Some(paths))
                    .build()
                    .map_err(build)?,
            )
            .caller_reference(reference)
            .build()
            .map_err(build)?;
        let out = self
            .client
            .create_invalidation()
            .distribution_id(&self.distribution_id)
            .invalidation_batch(batch)
            .send()
            .await
            .map_err(classify)?;
        let invalidation = out
            .invalidation()
            .ok_or_else(|| CdnError::Rejected("no invalidation in the answer".into()))?;
        Ok(Accepted {
            id: invalidation.id().to_string(),
            in_progress: !is_completed(invalidation.status()),
        })
    }

    async fn in_progress(&self, id: &str) -> Result<bool, CdnError> {
        let out = self
            .client
            .get_invalidation()
            .distribution_id(&self.distribution_id)
            .id(id)
            .send()
            .await
            .map_err(classify)?;
        Ok(!out.invalidation().is_some_and(|i| is_completed(i.status())))
    }
}

fn is_completed(status: &str) -> bool {
    status.eq_ignore_ascii_case("completed")
}

fn classify<E>(err: SdkError<E, aws_sdk_cloudfront::config::http::HttpResponse>) -> CdnError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let code = ctx.err().code().unwrap_or_default();
            let what = format!(
                "{} {} (HTTP {status})",
                if code.is_empty() { "error" } else { code },
                ctx.err().message().unwrap_or_default()
            );
            match code {
                "NoSuchDistribution" => CdnError::NoSuchDistribution,
                "AccessDenied"
                | "InvalidClientTokenId"
                | "SignatureDoesNotMatch"
                | "ExpiredToken"
                | "UnrecognizedClientException" => CdnError::AccessDenied(what),
                "TooManyInvalidationsInProgress"
                | "Throttling"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "ServiceUnavailable" => CdnError::Transient(what),
                _ if status >= 500 || status == 429 => CdnError::Transient(what),
                _ if status == 403 => CdnError::AccessDenied(what),
                _ => CdnError::Rejected(what),
            }
        }
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            match no_answer::classify(&err) {
                NoAnswer::NoCredentials(why) => CdnError::AccessDenied(why),
                NoAnswer::Unreachable(why) => CdnError::Transient(why),
            }
        }
        _ => CdnError::Rejected(one_line(&err)),
    }
}
