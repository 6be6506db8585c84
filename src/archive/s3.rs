//! An archive in an S3-compatible object store (AWS S3, MinIO, Ceph RGW, R2, ...), under a
//! bucket and an optional prefix: `s3://BUCKET/PREFIX`. Built on the `object_store` crate.
//! One file, a little over 600 lines: the configuration, the store and retention's blocking
//! check all go through the one client and its one mapping of the store's errors.
//!
//! The store's rules on an object store's terms: `put` is one conditional create
//! (`If-None-Match: *`), so an object appears whole or not at all and an existing one is never
//! replaced; a successful PUT is durable, so `sync` has nothing to do. A PUT whose ETag is the
//! MD5 of the bytes sent proves the store holds them, so the archiver reads back only objects
//! whose ETag proves nothing (see [`etag_proves`]). Requests that fail on a
//! transient error (a 5xx, throttling, a connection refused or cut) are retried by the client
//! with capped exponential backoff and jitter, and what still fails becomes an I/O error that the
//! archiver's watch loop retries; a permanent error (access denied, a wrong signature, no such
//! bucket) fails at once as [`Error::Storage`], with the store's message.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, Checksum};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientConfigKey, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig,
};

use super::store::{check_name, ArchiveStore, ObjectInfo, PutOutcome};
use crate::error::{Error, Result};

/// Where an S3 archive is and how to reach it. Every `None` falls back to the usual AWS
/// environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
/// `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`).
#[derive(Clone, Default)]
pub struct S3Config {
    pub bucket: String,
    /// Object names are `PREFIX/NAME`; empty for the bucket's root.
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub allow_http: Option<bool>,
}

// Never prints a secret.
impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "***"),
            )
            .field("session_token", &self.session_token.as_ref().map(|_| "***"))
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

impl S3Config {
    /// Parses `s3://BUCKET[/PREFIX]`. The prefix may not hold empty, `.` or `..` parts.
    pub fn from_url(url: &str) -> Result<S3Config> {
        let bad = |why: &str| {
            Error::InvalidArgument(format!(
                "invalid archive URL {url:?}: {why} (expected s3://BUCKET or s3://BUCKET/PREFIX)"
            ))
        };
        let rest = url.strip_prefix("s3://").ok_or_else(|| bad("not s3://"))?;
        let (bucket, prefix) = match rest.split_once('/') {
            Some((b, p)) => (b, p.trim_end_matches('/')),
            None => (rest, ""),
        };
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            return Err(bad(
                "a bucket name is 3 to 63 lowercase letters, digits, '-' and '.'",
            ));
        }
        if !prefix.is_empty()
            && prefix
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == ".." || p.contains(['?', '#']))
        {
            return Err(bad(
                "the prefix has an empty, '.' or '..' part, or a '?' or '#'",
            ));
        }
        Ok(S3Config {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            ..S3Config::default()
        })
    }

    /// `s3://BUCKET/PREFIX`: the archive's location in messages and the consumer registry.
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// An archive under a bucket and prefix of an S3-compatible store.
#[derive(Clone, Debug)]
pub struct S3Store {
    inner: Arc<AmazonS3>,
    url: String,
    prefix: String,
}

/// The client's own retries: a request failing on a transient error is tried again after 100
/// ms, doubling up to 5 s (each pause drawn at random below that), at most 6 times and for at
/// most 60 s in all; then the error goes to the caller (the archiver's pass fails and its watch
/// loop retries later).
fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: 6,
        retry_timeout: Duration::from_secs(60),
    }
}

impl S3Store {
    /// Builds the client (no request is made yet).
    pub fn new(cfg: &S3Config) -> Result<S3Store> {
        // rustls with the ring provider (see Cargo.toml); installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = AmazonS3Builder::from_env().with_bucket_name(&cfg.bucket);
        if let Some(e) = &cfg.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some(r) = &cfg.region {
            b = b.with_region(r);
        }
        if let Some(k) = &cfg.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(k) = &cfg.secret_access_key {
            b = b.with_secret_access_key(k);
        }
        if let Some(t) = &cfg.session_token {
            b = b.with_token(t);
        }
        if let Some(h) = cfg.allow_http {
            b = b.with_allow_http(h);
        }
        let b = b
            .with_retry(retry_config())
            // Every PUT carries x-amz-checksum-sha256 (the digest signing computes anyway): a
            // store that checks it (AWS S3, MinIO) refuses bytes damaged on the way.
            .with_checksum_algorithm(Checksum::SHA256)
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                "5s",
            )
            .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "120s");
        let inner = b.build().map_err(|e| {
            Error::InvalidArgument(format!("{}: cannot set up the S3 client: {e}", cfg.url()))
        })?;
        Ok(S3Store {
            inner: Arc::new(inner),
            url: cfg.url(),
            prefix: cfg.prefix.clone(),
        })
    }

    fn path(&self, name: &str) -> Result<ObjectPath> {
        check_name(name)?;
        Ok(if self.prefix.is_empty() {
            ObjectPath::from(name)
        } else {
            ObjectPath::from(format!("{}/{name}", self.prefix))
        })
    }

    fn err(&self, what: &str, name: &str, e: object_store::Error) -> Error {
        storage_error(&format!("{what} {}/{name}", self.url), e)
    }
}

/// Maps a client error: permanent ones (access denied, wrong credentials, no such bucket, a
/// bad request) to [`Error::Storage`], the rest (what the client's retries did not overcome) to
/// an I/O error, which a watching archiver retries.
fn storage_error(context: &str, e: object_store::Error) -> Error {
    use object_store::Error as E;
    let text = readable(&error_chain(&e));
    let permanent = match &e {
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => true,
        // A missing object is handled by the callers; a 404 reaching here is a missing bucket.
        E::NotFound { .. } => true,
        E::Generic { .. } => {
            text.contains("NoSuchBucket")
                || text.contains("InvalidAccessKeyId")
                || text.contains("SignatureDoesNotMatch")
                || text.contains("AccessDenied")
                || text.contains("400 Bad Request")
        }
        _ => false,
    };
    if permanent {
        Error::Storage(format!("{context}: {text}"))
    } else {
        Error::io(context.to_string(), std::io::Error::other(text))
    }
}

/// An error text on one line: an S3 XML error body given by its `Code` and `Message`,
/// whitespace collapsed, and where credentials come from when the client, finding none in the
/// environment, asked the instance metadata service.
fn readable(text: &str) -> String {
    let tag = |t: &str| {
        let (open, close) = (format!("<{t}>"), format!("</{t}>"));
        let s = text.find(&open)? + open.len();
        let e = text[s..].find(&close)? + s;
        Some(&text[s..e])
    };
    let xml = text.find("<?xml").or_else(|| text.find("<Error>"));
    let mut out = match (xml, tag("Code")) {
        (Some(at), Some(code)) => format!(
            "{}{code}{}",
            &text[..at],
            tag("Message").map_or(String::new(), |m| format!(": {m}"))
        ),
        _ => text.to_string(),
    };
    out = out.split_whitespace().collect::<Vec<_>>().join(" ");
    if out.contains("169.254.169.254") {
        out.push_str(" (no credentials in the environment: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run where the instance metadata service gives them)");
    }
    out
}

/// The error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Lowercase hex MD5 of `data`.
fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether a single PUT's ETag proves the store holds exactly the bytes sent: S3 and the stores
/// that follow it answer a single-part PUT with the MD5 of the bytes they received (quoted), so
/// an ETag equal to the MD5 of what was sent proves them. It is not an MD5 for a multipart
/// upload (`"HEX-PARTS"`, which walship never makes), under SSE-KMS or SSE-C encryption, and
/// on some other stores: there it does not match, proves nothing, and the caller reads the
/// object back instead.
fn etag_proves(etag: Option<&str>, md5_hex: &str) -> bool {
    let Some(etag) = etag else { return false };
    let etag = etag.strip_prefix("W/").unwrap_or(etag).trim_matches('"');
    etag.len() == 32 && etag.eq_ignore_ascii_case(md5_hex)
}

/// Lets the bytes of an `Arc<Vec<u8>>` be sent without a copy.
struct Shared(Arc<Vec<u8>>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

impl S3Store {
    async fn put_object(&self, name: &str, data: Arc<Vec<u8>>) -> Result<PutOutcome> {
        let path = self.path(name)?;
        // One PUT holds up to 5 GiB; a segment is at most 1 GiB, so every object is written
        // by a single conditional create and is whole or absent.
        let payload = PutPayload::from_bytes(bytes::Bytes::from_owner(Shared(data.clone())));
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        // The MD5 of what is sent, computed while it is being sent.
        let md5 = super::blocking(move || Ok(md5_hex(&data)));
        let (put, md5) =
            futures::future::join(self.inner.put_opts(&path, payload, opts), md5).await;
        match put {
            Ok(r) => Ok(PutOutcome::Created {
                verified: etag_proves(r.e_tag.as_deref(), &md5?),
            }),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(PutOutcome::AlreadyExists),
            Err(e) => Err(self.err("put", name, e)),
        }
    }

    async fn get_object(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(name)?;
        let r = match self.inner.get(&path).await {
            Ok(r) => r,
            Err(e @ object_store::Error::NotFound { .. }) => return self.absent("get", name, e),
            Err(e) => return Err(self.err("get", name, e)),
        };
        let b = r.bytes().await.map_err(|e| self.err("get", name, e))?;
        Ok(Some(b.to_vec()))
    }

    /// A 404 for an object: `None`, unless the store said the bucket itself is missing
    /// (which must not look like an empty archive).
    fn absent<T>(&self, what: &str, name: &str, e: object_store::Error) -> Result<Option<T>> {
        if error_chain(&e).contains("NoSuchBucket") {
            return Err(self.err(what, name, e));
        }
        Ok(None)
    }

    async fn list_objects(&self) -> Result<Vec<ObjectInfo>> {
        let prefix = (!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.as_str()));
        let mut out = Vec::new();
        let mut s = self.inner.list(prefix.as_ref());
        while let Some(m) = s.next().await {
            let m = m.map_err(|e| storage_error(&format!("list {}", self.url), e))?;
            let full = m.location.as_ref();
            let rel = if self.prefix.is_empty() {
                full
            } else {
                match full
                    .strip_prefix(self.prefix.as_str())
                    .and_then(|r| r.strip_prefix('/'))
                {
                    Some(r) => r,
                    None => continue,
                }
            };
            // Only objects directly under the prefix, with an object's name.
            if rel.contains('/') || check_name(rel).is_err() {
                continue;
            }
            out.push(ObjectInfo {
                name: rel.to_string(),
                size: m.size,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn exists_object(&self, name: &str) -> Result<bool> {
        let path = self.path(name)?;
        match self.inner.head(&path).await {
            Ok(_) => Ok(true),
            // A HEAD answer has no body to tell a missing bucket by; the listing every pass
            // starts with and the put that follows say so.
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err("head", name, e)),
        }
    }

    async fn delete_object(&self, name: &str) -> Result<bool> {
        // S3 answers a delete of a missing key with success: ask first.
        if !self.exists_object(name).await? {
            return Ok(false);
        }
        let path = self.path(name)?;
        match self.inner.delete(&path).await {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err("delete", name, e)),
        }
    }
}

/// Whether the archive at `url` (reached through the AWS environment) holds sealed segment
/// `seg` of `size` bytes: its uncompressed object with that size, or a non-empty compressed
/// one, or it begins after `seg` (pruned: no longer the archive's to hold). For retention, which is synchronous: runs its own small runtime on its own thread.
pub fn holds_segment_blocking(
    url: &str,
    seg: crate::format::SegmentName,
    size: u64,
    control: &crate::format::ControlFile,
) -> Result<std::result::Result<(), String>> {
    use super::{object_name, Compression};
    let cfg = S3Config::from_url(url)?;
    let store = S3Store::new(&cfg)?;
    let check = async move {
        let identity = store.get_object(super::IDENTITY_NAME).await?;
        if let Some(why) = super::identity::not_archive_of(identity.as_deref(), control) {
            return Ok(Err(why));
        }
        let mut found = Vec::new();
        for c in [Compression::None, Compression::Zstd] {
            let name = object_name(seg, c);
            let path = store.path(&name)?;
            match store.inner.head(&path).await {
                Ok(m) => found.push((c, m.size)),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store.err("head", &name, e)),
            }
        }
        match found[..] {
            // Under both names, the segment is damage a restore refuses: not held.
            [_, _] => return Ok(Err(crate::retention::twice(seg))),
            [(Compression::None, n)] if n == size => return Ok(Ok(())),
            [(Compression::Zstd, n)] if n > 0 => return Ok(Ok(())),
            _ => {}
        }
        // Not there: pruned, when the archive now begins after it.
        let pruned =
            identity.is_some_and(|id| super::identity::begins_after(&id, seg.segment_no.0));
        Ok(if pruned {
            Ok(())
        } else {
            Err("it does not hold it".into())
        })
    };
    std::thread::scope(|sc| {
        sc.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::io("start a runtime to check the archive", e))?
                .block_on(check)
        })
        .join()
        .unwrap_or_else(|_| Err(Error::Other("the archive check panicked".into())))
    })
}

impl ArchiveStore for S3Store {
    fn location(&self) -> String {
        self.url.clone()
    }

    fn put(
        &self,
        name: &str,
        data: Arc<Vec<u8>>,
    ) -> impl std::future::Future<Output = Result<PutOutcome>> + Send {
        let (s, name) = (self.clone(), name.to_string());
        async move { s.put_object(&name, data).await }
    }

    fn get(&self, name: &str) -> impl std::future::Future<Output = Result<Option<Vec<u8>>>> + Send {
        let (s, name) = (self.clone(), name.to_string());
        async move { s.get_object(&name).await }
    }

    fn list(&self) -> impl std::future::Future<Output = Result<Vec<ObjectInfo>>> + Send {
        let s = self.clone();
        async move { s.list_objects().await }
    }

    fn exists(&self, name: &str) -> impl std::future::Future<Output = Result<bool>> + Send {
        let (s, name) = (self.clone(), name.to_string());
        async move { s.exists_object(&name).await }
    }

    /// A PUT the store acknowledged is durable: nothing to do beyond checking the object is
    /// there.
    fn sync(&self, name: &str) -> impl std::future::Future<Output = Result<()>> + Send {
        let (s, name) = (self.clone(), name.to_string());
        async move {
            if s.exists_object(&name).await? {
                Ok(())
            } else {
                Err(Error::io(
                    format!("sync {}/{name}", s.url),
                    std::io::Error::new(std::io::ErrorKind::NotFound, "the object vanished"),
                ))
            }
        }
    }

    fn delete(&self, name: &str) -> impl std::future::Future<Output = Result<bool>> + Send {
        let (s, name) = (self.clone(), name.to_string());
        async move { s.delete_object(&name).await }
    }

    /// One unconditional PUT: S3 replaces an object at once, so a reader sees the old or the
    /// new one whole. Read back and compared.
    fn replace(
        &self,
        name: &str,
        data: Arc<Vec<u8>>,
    ) -> impl std::future::Future<Output = Result<()>> + Send {
        let (s, name) = (self.clone(), name.to_string());
        async move {
            let path = s.path(&name)?;
            let payload = PutPayload::from_bytes(bytes::Bytes::from_owner(Shared(data.clone())));
            s.inner
                .put_opts(&path, payload, PutOptions::default())
                .await
                .map_err(|e| s.err("put", &name, e))?;
            match s.get_object(&name).await? {
                Some(back) if back == *data => Ok(()),
                _ => Err(Error::Corrupt {
                    file: std::path::PathBuf::from(&s.url).join(&name),
                    offset: 0,
                    lsn: crate::Lsn(0),
                    reason: "read back from the archive differs from what was written".into(),
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_errors_read_as_one_line() {
        let body = "Server returned non-2xx status code: 404 Not Found: <?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message><BucketName>b</BucketName></Error>";
        assert_eq!(
            readable(body),
            "Server returned non-2xx status code: 404 Not Found: NoSuchBucket: The specified bucket does not exist"
        );
        let imds = "Error performing PUT http://169.254.169.254/latest/api/token - 403 Forbidden";
        assert!(readable(imds).ends_with(
            "(no credentials in the environment: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run where the instance metadata service gives them)"
        ));
        assert_eq!(readable("plain\n  text"), "plain text");
    }

    #[test]
    fn parses_urls() {
        let c = S3Config::from_url("s3://wal-backup/prod/app").unwrap();
        assert_eq!(
            (c.bucket.as_str(), c.prefix.as_str()),
            ("wal-backup", "prod/app")
        );
        assert_eq!(c.url(), "s3://wal-backup/prod/app");
        let c = S3Config::from_url("s3://wal-backup/").unwrap();
        assert_eq!(c.prefix, "");
        assert_eq!(c.url(), "s3://wal-backup");
        for bad in [
            "s3://",
            "s3://AB",
            "s3://Bucket/x",
            "s3://bucket/a//b",
            "s3://bucket/../b",
            "http://bucket/x",
        ] {
            assert!(S3Config::from_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn etag_is_a_proof_only_when_it_is_the_md5_sent() {
        let md5 = md5_hex(b"hello");
        assert_eq!(md5, "5d41402abc4b2a76b9719d911017c592");
        assert!(etag_proves(
            Some("\"5d41402abc4b2a76b9719d911017c592\""),
            &md5
        ));
        assert!(etag_proves(
            Some("\"5D41402ABC4B2A76B9719D911017C592\""),
            &md5
        ));
        assert!(etag_proves(Some("5d41402abc4b2a76b9719d911017c592"), &md5));
        for other in [
            None,
            Some(""),
            Some("\"5d41402abc4b2a76b9719d911017c592-1\""),
            Some("\"00000000000000000000000000000000\""),
            Some("\"5d41402abc4b2a76b9719d911017c5\""),
        ] {
            assert!(!etag_proves(other, &md5), "{other:?}");
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let c = S3Config {
            secret_access_key: Some("very-secret".into()),
            session_token: Some("tok-secret".into()),
            ..S3Config::from_url("s3://bkt").unwrap()
        };
        let s = format!("{c:?}");
        assert!(
            !s.contains("very-secret") && !s.contains("tok-secret"),
            "{s}"
        );
    }
}
