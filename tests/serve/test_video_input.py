"""video_url parts that name a local file: read only inside --allowed-local-media-path."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from omnifuse.data.inline_media import MediaLimits
from omnifuse.serve import protocol as P
from omnifuse.video import write_video


def _request(url: str) -> P.ChatRequest:
    part = {"type": "video_url", "video_url": {"url": url}}
    return P.ChatRequest.model_validate({"model": "tiny", "messages": [{"role": "user", "content": [part]}]})


def test_file_urls_are_read_only_inside_the_allowed_folder(server, monkeypatch, tmp_path):
    allowed = tmp_path / "media"
    allowed.mkdir()
    clip = write_video(allowed / "a clip.mp4", np.zeros((2, 16, 16, 3), np.uint8), 2)
    outside = write_video(tmp_path / "b.mp4", np.zeros((2, 16, 16, 3), np.uint8), 2)
    service = server.service
    monkeypatch.setattr(service, "modalities", {"image", "video"})  # as a model with a video encoder
    with pytest.raises(P.APIError, match="--allowed-local-media-path") as exc:
        service.to_sample(_request(f"file://{clip}"))
    assert exc.value.status == 400
    limits = MediaLimits(local_media_path=allowed)
    monkeypatch.setattr(service, "settings", dataclasses.replace(service.settings, media=limits))
    sample = service.to_sample(_request(f"file://{str(clip).replace(' ', '%20')}"))
    assert [v.path for v in sample.videos()] == [clip.resolve()]
    for bad in (f"file://{outside}", f"file://{allowed}/../b.mp4", f"file://{allowed}/missing.mp4"):
        with pytest.raises(P.APIError, match="not a file inside the server's local media folder") as exc:
            service.to_sample(_request(bad))
        assert exc.value.param == "messages.0.content.0.video_url.url"
