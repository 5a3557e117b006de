"""In-process gateway: the real app and model artifacts, a scripted engine."""

import httpx2
import pytest

from gateway.api.app import create_app
from gateway.chat.served_model import model_view
from gateway.settings import Settings
from gateway.server.triton_launcher import prepare_artifacts

from tests.app.scripted_engine import Script, ScriptedEngine


@pytest.fixture(scope="session")
def model():
    settings = Settings()
    return model_view(prepare_artifacts(settings), settings.triton_model)


@pytest.fixture
def engine():
    return ScriptedEngine()


@pytest.fixture
def settings(tmp_path):
    return Settings(served_model="electron", max_messages=200, data_dir=str(tmp_path / "data"))


@pytest.fixture
def app(settings, engine, model):
    return create_app(settings, engine, model)


@pytest.fixture
async def client(app):
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://gateway") as c:
        yield c
    await app.state.gateway.accounts.close()


@pytest.fixture
def say(engine, model):
    """Script the engine to answer with ``text`` (its token ids, one per response)."""

    def script(text: str, **options) -> list[int]:
        ids = model.codec.encode(text)
        engine.script = Script(tokens=ids, **options)
        return ids

    return script
