"""The few S3 requests the harness makes itself (the rest go through
s3mount-bench): deleting W13's large objects, and the uploads a failed stream
left behind, so that Garage can free their blocks. SigV4 over plain HTTP, path
style, with the settings of `scripts/garage.sh start`."""

import datetime
import hashlib
import hmac
import http.client
import urllib.parse
import xml.etree.ElementTree as ET

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def _quote(s, safe="-_.~"):
    return urllib.parse.quote(s, safe=safe)


def request(env, method, bucket, key="", query=None, body=b"", timeout=60):
    """One signed request to the server of `env`; returns (status, body)."""
    endpoint = urllib.parse.urlsplit(env["S3_ENDPOINT"])
    region = env.get("AWS_REGION", "us-east-1")
    path = "/" + _quote(bucket) + ("/" + _quote(key, safe="-_.~/") if key else "")
    query = query or {}
    canonical_query = "&".join(
        f"{_quote(k)}={_quote(v)}" for k, v in sorted(query.items())
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = now.strftime("%Y%m%d")
    payload = hashlib.sha256(body).hexdigest()
    headers = {"host": endpoint.netloc, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        [method, path, canonical_query]
        + [f"{k}:{headers[k]}" for k in sorted(headers)]
        + ["", signed, payload]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    k = ("AWS4" + env["AWS_SECRET_ACCESS_KEY"]).encode()
    for part in (day, region, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={env['AWS_ACCESS_KEY_ID']}/{scope}, "
        f"SignedHeaders={signed}, Signature={signature}"
    )
    conn = http.client.HTTPConnection(endpoint.hostname, endpoint.port, timeout=timeout)
    try:
        conn.request(method, path + ("?" + canonical_query if canonical_query else ""), body, headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def delete_object(env, bucket, key):
    status, body = request(env, "DELETE", bucket, key)
    if status not in (200, 204, 404):
        raise OSError(f"DeleteObject {bucket}/{key}: HTTP {status}: {body[:200]!r}")


def abort_uploads(env, bucket, prefix=""):
    """Abort every unfinished multipart upload under `prefix`; returns how many."""
    query = {"uploads": ""}
    if prefix:
        query["prefix"] = prefix
    status, body = request(env, "GET", bucket, query=query)
    if status != 200:
        raise OSError(f"ListMultipartUploads {bucket}: HTTP {status}: {body[:200]!r}")
    n = 0
    for upload in ET.fromstring(body).iter(NS + "Upload"):
        key = upload.findtext(NS + "Key")
        upload_id = upload.findtext(NS + "UploadId")
        if key is None or upload_id is None:
            continue
        status, body = request(env, "DELETE", bucket, key, {"uploadId": upload_id})
        if status not in (200, 204, 404):
            raise OSError(f"AbortMultipartUpload {key}: HTTP {status}: {body[:200]!r}")
        n += 1
    return n
