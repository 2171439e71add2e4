import pytest

from services.inspection.service import InspectionService
from tests import support


@pytest.fixture
def inspection_stack(amqp_uri, database_url):
    """The inspection service of a street stack (金牛山街道) on a free port."""
    port = support.free_port()
    config = support.base_config(amqp_uri, database_url,
                                 WEB_ADDRESSES={"inspection": f"127.0.0.1:{port}"}, MAX_BODY_BYTES=200_000)
    with support.running_services(config, InspectionService) as runner:
        yield {"api": support.ApiClient(f"http://127.0.0.1:{port}"), "config": config, "runner": runner,
               "database_url": database_url, "amqp_uri": amqp_uri}
