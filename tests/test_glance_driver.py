"""What the Glance driver does with Glance's own answers and with failures.

Faults are injected by the test server's wrapper (see glance_server.py);
everything else is Glance deciding.
"""

from __future__ import annotations

import io
import time

import pytest
from conftest import ALICE, FAST_RETRY, make_image, random_bytes

from imagefs import errors
from imagefs.api import API
from imagefs.context import RequestContext
from imagefs.drivers.glance import GlanceDriver, error_for_status
from imagefs.retry import RetryPolicy

pytestmark = pytest.mark.glance


@pytest.fixture
def api(glance_clean):
    return API(GlanceDriver(glance_clean.url, timeout=10), retry=FAST_RETRY)


@pytest.mark.parametrize("status, error", [
    (404, errors.ImageNotFound), (401, errors.ImageNotAuthorized),
    (403, errors.ImageNotAuthorized), (400, errors.ImageBadRequest),
    (409, errors.ImageConflict), (413, errors.ImageQuotaExceeded),
    (500, errors.BackendUnavailable), (503, errors.BackendUnavailable),
])
def test_error_table(status, error):
    assert isinstance(error_for_status(status, "x"), error)


def test_bad_token_is_not_authorized(api, glance_clean):
    with pytest.raises(errors.ImageNotAuthorized, match="authentication"):
        list(api.get_all(RequestContext(auth_token="stolen")))


@pytest.mark.parametrize("status, error", [(413, errors.ImageQuotaExceeded),
                                           (409, errors.ImageConflict),
                                           (403, errors.ImageNotAuthorized)])
def test_http_errors_through_glanceclient(api, glance_clean, tag, status, error):
    image = make_image(api, ALICE, tag)
    glance_clean.reset()
    glance_clean.faults(fail_count=1, fail_status=status)
    with pytest.raises(error):
        api.get(ALICE, image["id"])
    assert glance_clean.stats()["requests"] == 1  # not retried


def test_transient_5xx_is_retried(api, glance_clean, tag):
    image = make_image(api, ALICE, tag)
    glance_clean.reset()
    glance_clean.faults(fail_count=2)
    assert api.get(ALICE, image["id"])["id"] == image["id"]
    assert glance_clean.stats()["requests"] == 3


def test_lasting_5xx_gives_up_after_bounded_retries(api, glance_clean, tag):
    image = make_image(api, ALICE, tag)
    glance_clean.reset()
    glance_clean.faults(down=True)
    start = time.monotonic()
    with pytest.raises(errors.BackendUnavailable, match="503"):
        api.read(ALICE, image["id"], 0, 10)
    assert time.monotonic() - start < FAST_RETRY.deadline
    assert glance_clean.stats()["requests"] == FAST_RETRY.attempts
    glance_clean.faults()
    assert api.read(ALICE, image["id"], 0, 4) == b"imag"


def test_unreachable_service_is_backend_unavailable():
    from glance_server import free_port

    api = API(GlanceDriver(f"http://127.0.0.1:{free_port()}", timeout=2), retry=FAST_RETRY)
    with pytest.raises(errors.BackendUnavailable, match="cannot reach"):
        api.get(ALICE, "00000000-0000-4000-8000-000000000000")


def test_create_is_never_retried(api, glance_clean, tag):
    glance_clean.faults(fail_count=1)
    with pytest.raises(errors.BackendUnavailable):
        make_image(api, ALICE, tag)
    glance_clean.faults()
    assert list(api.get_all(ALICE, test_tag=tag, status=None)) == []


def test_upload_to_an_active_image_is_a_conflict_glance_decides(api, tag):
    image = make_image(api, ALICE, tag)
    with pytest.raises(errors.ImageConflict):
        api.default.upload(ALICE, image["id"], iter([b"again"]))


def test_queued_image_has_no_data(api, tag):
    image = make_image(api, ALICE, tag, data=None)
    with pytest.raises(errors.ImageNoData):  # Glance answers 204
        list(api.stream(ALICE, image["id"]))
    with pytest.raises(errors.ImageNoData):  # checked before any GET of the data
        api.download(ALICE, image["id"], data=io.BytesIO())


def test_uri_of_another_glance_is_refused(api):
    with pytest.raises(errors.ImageBadRequest, match="no configured image service"):
        api.get(ALICE, "http://elsewhere:9292/v2/images/00000000-0000-4000-8000-000000000000")


def test_store_that_refuses_ranges(api, glance_clean, tag):
    data = random_bytes(3_000_000)
    image = make_image(api, ALICE, tag, data=data)
    glance_clean.reset()
    glance_clean.faults(refuse_ranges=True)
    with pytest.raises(errors.RangesRefused):  # the driver says so; callers decide
        api.default.read(ALICE, image["id"], 2_000_000, 1000)
    # The API reads such a store from the start, skipped forward.
    assert api.read(ALICE, image["id"], 2_000_000, 1000) == data[2_000_000:2_001_000]
    assert b"".join(api.stream(ALICE, image["id"], 1_500_000)) == data[1_500_000:]
    assert api.read(ALICE, image["id"], 5, 5) == data[5:10]
    assert api.read(ALICE, image["id"], len(data) + 5, 5) == b""
    assert glance_clean.stats()["data_requests"] == 9  # 5 refused, 4 from the start


def test_download_resumes_with_a_range_after_a_dropped_connection(api, glance_clean, tag,
                                                                  tmp_path):
    data = random_bytes(5_000_000)
    image = make_image(api, ALICE, tag, data=data)
    glance_clean.reset()
    glance_clean.faults(drop_after=3_000_000, drop_count=1)
    api.download(ALICE, image["id"], dest_path=tmp_path / "img")
    assert (tmp_path / "img").read_bytes() == data
    stats = glance_clean.stats()
    assert stats["data_requests"] == 2 and stats["range_requests"] == 1
    assert stats["data_bytes"] < 1.5 * len(data)  # resumed, not restarted


def test_download_resumes_on_a_store_that_refuses_ranges(api, glance_clean, tag):
    data = random_bytes(4_000_000)
    image = make_image(api, ALICE, tag, data=data)
    glance_clean.faults(drop_after=2_500_000, drop_count=1, refuse_ranges=True)
    out = io.BytesIO()
    api.download(ALICE, image["id"], data=out)
    assert out.getvalue() == data


def test_ranged_read_dropped_mid_body_is_retried(api, glance_clean, tag):
    data = random_bytes(3_000_000)
    image = make_image(api, ALICE, tag, data=data)
    glance_clean.faults(drop_after=500_000, drop_count=1)
    assert api.read(ALICE, image["id"], 100_000, 2_000_000) == data[100_000:2_100_000]


def test_download_gives_up_when_drops_continue(glance_clean, tag, tmp_path):
    api = API(GlanceDriver(glance_clean.url, timeout=10),
              retry=RetryPolicy(attempts=2, base_delay=0.01, deadline=5))
    image = make_image(api, ALICE, tag, data=random_bytes(3_000_000))
    glance_clean.faults(drop_after=100, drop_count=100)
    with pytest.raises(errors.BackendUnavailable):
        api.download(ALICE, image["id"], dest_path=tmp_path / "img")
    assert not (tmp_path / "img").exists()
    assert list(tmp_path.iterdir()) == []
