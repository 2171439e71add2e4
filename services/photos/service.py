"""Photo service: before- and after-photos (整改前/整改后照片) as evidence.

Entrypoints only: what a file is and its thumbnail in `domain`, where the bytes live in
`storage`, who may see a photo in `operations`.

    POST /photos                       the photo's bytes as the body (image/jpeg, image/png,
                                       image/webp); inspectors and rectifiers; 201 (200 if
                                       the same bytes were stored before)
    GET  /photos/<photo_id>            the photo (photo_id: its sha256), to its uploader or to whoever may see the
    GET  /photos/<photo_id>/thumbnail  inspection (?inspection_id=) or task (?task_id=) showing it

Inspections and task actions refer to a photo by its sha256 in their evidence entries
({"uri": "photos/<sha256>", "sha256": ..., "taken_at": ..., "gps": ...}).

Config (infra/nameko.yaml; each PHOTOS_* setting also from the environment variable):
  PHOTOS_STORE       disk (default) or s3
  PHOTOS_DIR         the disk store's directory (default var/photos)
  PHOTOS_S3_BUCKET   with s3: the bucket (required; it must exist: startup fails naming the
                     setting otherwise)
  PHOTOS_S3_ENDPOINT the S3-compatible store's URL (MinIO http://minio.lan:9000, OSS
                     https://oss-cn-hangzhou.aliyuncs.com, COS https://cos.ap-beijing.myqcloud.com,
                     OBS https://obs.cn-north-4.myhuaweicloud.com); default AWS S3
  PHOTOS_S3_REGION   the store's region (default us-east-1, or AWS_REGION / AWS_DEFAULT_REGION)
  PHOTOS_S3_PREFIX   key prefix inside the bucket (e.g. 411502008000/photos/), default none
  PHOTOS_S3_ACCESS_KEY, PHOTOS_S3_SECRET_KEY   credentials (else AWS_ACCESS_KEY_ID /
                     AWS_SECRET_ACCESS_KEY, or the AWS credential files)
  PHOTOS_S3_PATH_STYLE  true for MinIO and stores without per-bucket host names (default false)
  PHOTOS_S3_CONNECT_TIMEOUT, PHOTOS_S3_READ_TIMEOUT (s, default 3 and 10),
  PHOTOS_S3_MAX_ATTEMPTS (tries per call, default 3): an unreachable store is then a 503
                     with Retry-After, like a database outage
  PHOTOS_MAX_BYTES   largest accepted upload (default 15 MB)
  PHOTOS_MAX_PIXELS  largest accepted width × height (default 16 megapixels, read from the
                     header and refused before any pixel is decoded)
  PHOTOS_DECODE_SECONDS  a photo's decoding (in a worker process, `services.plumbing.offload`)
                     is abandoned after this long: 422 (default 5)
  OFFLOAD_WORKERS, OFFLOAD_MEMORY_MB (environment)  worker processes (default 2) and each
                     one's memory (default 1024 MiB); all busy for 5 s → 503 with Retry-After
  SERVICE_URLS       where inspection and tasks answer (default: their WEB_ADDRESSES)
"""
from __future__ import annotations

from nameko.extensions import DependencyProvider
from werkzeug.wrappers import Response

from services.contracts.identity import INSPECTOR, RECTIFIER
from services.photos import domain, operations as ops
from services.photos.schemas import PhotoOut, PhotoQuery
from services.photos.storage import open_store
from services.plumbing import offload, operator_endpoints
from services.plumbing.db import register_outage
from services.plumbing.auth import Authenticator, signed_in
from services.plumbing.clock import Clock
from services.plumbing.http import ApiError, api
from services.plumbing.upstream import Upstreams


register_outage("worker processes", offload.Busy, offload.WorkerFailed)


class PhotoStoreProvider(DependencyProvider):
    def setup(self):
        config = self.container.config
        self.store = open_store(config)
        check = getattr(self.store, "check", None)
        if check is not None:  # a bucket that does not exist fails the start, naming the setting
            check()
        self.limits = domain.Limits(int(config.get("PHOTOS_MAX_BYTES", domain.DEFAULT_MAX_BYTES)),
                                    int(config.get("PHOTOS_MAX_PIXELS", domain.DEFAULT_MAX_PIXELS)),
                                    float(config.get("PHOTOS_DECODE_SECONDS", domain.DEFAULT_DECODE_SECONDS)))
        self.upstreams = Upstreams(config)

    def get_dependency(self, worker_ctx):
        return self


class PhotosService(operator_endpoints.OperatorEndpoints):
    name = "photos"

    photos = PhotoStoreProvider()
    clock = Clock()

    def _read_upload(self, request) -> bytes:
        limit = self.photos.limits.max_bytes
        if request.content_length is not None and request.content_length > limit:
            raise ApiError(f"photo of {request.content_length} bytes exceeds the limit of {limit}",
                           field="body", status=413, code="payload_too_large")
        data = request.stream.read(limit + 1)
        if len(data) > limit:
            raise ApiError(f"photo exceeds the limit of {limit} bytes", field="body", status=413,
                           code="payload_too_large")
        return data

    @api("POST", "/photos", response=PhotoOut, status=201, statuses=(200,), access=signed_in(INSPECTOR, RECTIFIER),
         summary="上传照片 Upload a before- or after-photo (JPEG/PNG/WebP bytes as the body); named by its sha256",
         description="The type is decided by decoding the content, whatever the Content-Type says. EXIF capture "
                     "time and GPS are kept when present; a thumbnail is made. The same bytes again answer 200.")
    def upload(self, request, principal):
        created, photo = ops.store_photo(self.photos.store, self._read_upload(request), self.photos.limits,
                                         principal, self.clock.now())
        return (201 if created else 200), photo

    def _serve(self, request, sha256, query, principal, thumbnail):
        data, content_type, _ = ops.read_photo(self.photos.store, self.photos.upstreams, sha256, query, principal,
                                               Authenticator.token_of(request), thumbnail=thumbnail)
        # Private: evidence is for the people who may see the inspection, not for shared caches.
        return Response(data, content_type=content_type,
                        headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"})

    @api("GET", "/photos/<photo_id>", query=PhotoQuery, raw=True, access=signed_in(), content_type="image/jpeg",
         summary="查看照片 A photo, to its uploader or to whoever may see the inspection or task showing it")
    def get_photo(self, request, photo_id, query: PhotoQuery, principal):
        return self._serve(request, photo_id, query, principal, thumbnail=False)

    @api("GET", "/photos/<photo_id>/meta", query=PhotoQuery, response=PhotoOut, access=signed_in(),
         summary="照片信息 A photo's facts, to its uploader or to whoever sees the inspection or task showing it "
                 "(what tasks and inspection ask before a photo is cited as evidence)")
    def get_photo_meta(self, request, photo_id, query: PhotoQuery, principal):
        return ops.photo_meta(self.photos.store, self.photos.upstreams, photo_id, query, principal,
                              Authenticator.token_of(request))

    @api("GET", "/photos/<photo_id>/thumbnail", query=PhotoQuery, raw=True, access=signed_in(),
         content_type="image/jpeg", summary="照片缩略图 A photo's thumbnail (JPEG), on the same terms as the photo")
    def get_thumbnail(self, request, photo_id, query: PhotoQuery, principal):
        return self._serve(request, photo_id, query, principal, thumbnail=True)
