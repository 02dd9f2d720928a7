"""The official Python SDK (PyPI `anthropic`) through toklock to mock-anthropic."""

import json
import urllib.request

import anthropic
import pytest

from conftest import start_toklock

MODEL = "claude-sonnet-4-5"


def client(base_url: str, **kwargs) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=base_url, api_key="sk-ant-test-python", **kwargs)


def mock_stats(mock_url: str) -> dict:
    with urllib.request.urlopen(f"{mock_url}/_mock/stats", timeout=10) as response:
        return json.load(response)


def test_create_round_trip(proxy_url):
    message = client(proxy_url).messages.create(
        model=MODEL,
        max_tokens=64,
        messages=[{"role": "user", "content": "Say hello from Python."}],
    )
    assert message.type == "message"
    assert message.content and message.content[0].type == "text"
    assert message.content[0].text
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens > 0


def test_stream_round_trip(proxy_url):
    with client(proxy_url).messages.stream(
        model=MODEL,
        max_tokens=64,
        messages=[{"role": "user", "content": "Stream a few words."}],
    ) as stream:
        chunks = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(chunks) > 1, "a stream should arrive in several deltas"
    assert "".join(chunks) == final.content[0].text
    assert final.usage.output_tokens > 0
    assert final.stop_reason in ("end_turn", "max_tokens")


def test_raw_response_carries_rate_limit_headers(proxy_url):
    raw = client(proxy_url).messages.with_raw_response.create(
        model=MODEL,
        max_tokens=16,
        messages=[{"role": "user", "content": "hi"}],
    )
    assert raw.headers.get("anthropic-ratelimit-requests-limit")
    assert raw.headers.get("request-id")


def test_models_and_count_tokens(proxy_url):
    c = client(proxy_url)
    models = c.models.list()
    assert any(m.id for m in models.data)
    counted = c.messages.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": "count these words please"}]
    )
    assert counted.input_tokens > 0


def test_bearer_credential_reaches_upstream(proxy_url, mock_url):
    client(proxy_url).messages.create(
        model=MODEL,
        max_tokens=8,
        messages=[{"role": "user", "content": "who am i"}],
        extra_headers={"x-mock-caller": "python-bearer"},
    )
    stats = json.dumps(mock_stats(mock_url))
    assert "python-bearer" in stats


def test_unreachable_upstream_is_an_anthropic_error():
    proxy, url = start_toklock("http://127.0.0.1:1")
    try:
        with pytest.raises(anthropic.APIStatusError) as caught:
            client(url, max_retries=0).messages.create(
                model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "x"}]
            )
        assert caught.value.status_code == 502
        body = caught.value.body
        assert body["type"] == "api_error" or body.get("error", {}).get("type") == "api_error"
        assert "127.0.0.1" in str(caught.value)
        assert "sk-ant-test-python" not in str(caught.value)
    finally:
        proxy.stop()


def test_agent_names_need_no_code_change(proxy_url, mock_url, monkeypatch):
    # A header through ANTHROPIC_CUSTOM_HEADERS, read by the SDK itself.
    monkeypatch.setenv("ANTHROPIC_CUSTOM_HEADERS", "x-toklock-agent: py-header-agent")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", proxy_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-python")
    anthropic.Anthropic().messages.create(
        model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "named by header"}]
    )
    assert "py-header-agent" in mock_stats(mock_url)["by_caller"]

    # A path prefix in the base URL; toklock strips it, so the upstream sees /v1/messages.
    monkeypatch.delenv("ANTHROPIC_CUSTOM_HEADERS")
    message = anthropic.Anthropic(base_url=f"{proxy_url}/a/py-path-agent").messages.create(
        model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "named by path"}]
    )
    assert message.type == "message"


def test_scheduled_responses_report_their_queue_wait(proxy_url):
    raw = client(proxy_url).messages.with_raw_response.create(
        model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hi"}]
    )
    assert int(raw.headers["x-toklock-queue-ms"]) >= 0
