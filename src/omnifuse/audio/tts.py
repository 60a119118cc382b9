"""Speech synthesis with espeak-ng (the Debian package), for spoken answers.

espeak-ng is a command-line program; it is run with the text on stdin (never on the command line,
so text cannot become options) and writes a wav file (to a file, not stdout: its streamed header
leaves the data length unset, which players and the wave module misread).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from omnifuse.errors import OmnifuseError

INSTALL_HINT = "install it with `apt-get install espeak-ng` (Debian/Ubuntu) or `brew install espeak-ng`"
MAX_TEXT_CHARS = 5000


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def synthesize(text: str, voice: str = "en-us", speed_wpm: int = 170, timeout_s: float = 60.0) -> bytes:
    """The text spoken by espeak-ng, as the bytes of a 22.05 kHz mono 16-bit wav file."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise OmnifuseError(f"speech output needs espeak-ng, which is not installed; {INSTALL_HINT}")
    if not voice.replace("-", "").replace("+", "").isalnum():
        raise OmnifuseError(f"unknown voice {voice!r}; list the voices with `espeak-ng --voices`")
    text = text[:MAX_TEXT_CHARS].strip() or "."
    with tempfile.TemporaryDirectory(prefix="omnifuse-tts-") as tmp:
        wav = Path(tmp) / "speech.wav"
        try:
            res = subprocess.run(
                [exe, "-v", voice, "-s", str(speed_wpm), "-w", str(wav)],
                input=text.encode(),
                capture_output=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise OmnifuseError(f"espeak-ng took longer than {timeout_s:.0f} s; shorten the text") from None
        data = wav.read_bytes() if wav.is_file() else b""
    if res.returncode != 0 or not data.startswith(b"RIFF"):
        detail = res.stderr.decode(errors="replace").strip() or f"exit status {res.returncode}"
        raise OmnifuseError(f"espeak-ng could not speak with voice {voice!r}: {detail}")
    return data
