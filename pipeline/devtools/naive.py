"""The benchmark's naive loop: what the seed's notebooks do, frame by frame, in one thread.

cv2.VideoCapture reads the recording, each frame is turned gray and histogram-equalized with OpenCV,
made a PIL image and passed through torchvision transforms (Resize, ToTensor, Normalize), a PyTorch
eager ResNet18 classifies it, and one synchronous paho QoS 1 publish per frame waits for the
broker's acknowledgement before the next frame is read. `thermoscreen bench` runs this module as a
child process (`python -m pipeline.devtools.naive`) so the benchmark's own process never imports
torch.

It prints one JSON object on stdout: frames, timings and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, MqttConfig
from pipeline.mqtt.client import make_client, parse_host_port


def _connect(host: str, port: int) -> Any:
    client = make_client(
        MqttConfig(host=host, port=port), f"thermoscreen-naive-{uuid.uuid4().hex[:8]}"
    )
    client.connect(host, port, keepalive=30)
    client.loop_start()
    return client


def _torch_model(arch: str, num_classes: int, weights: str, threads: int | None) -> Any:
    """A torchvision model in eval mode, with a training checkpoint's weights when given."""
    import torch
    import torchvision

    if threads is not None:
        torch.set_num_threads(threads)
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    if weights != "none":  # a training checkpoint: its state dict, as `thermoscreen train` saves it
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    return model.eval()


def _transform() -> Any:
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize((224, 224)),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )


def _classify(model: Any, transform: Any, bgr: Any) -> list[float]:
    """The notebook's steps for one frame: gray, equalize, PIL RGB, transforms, eager forward."""
    import cv2
    import torch
    from PIL import Image

    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    image = Image.fromarray(cv2.cvtColor(cv2.equalizeHist(gray), cv2.COLOR_GRAY2RGB))
    x = transform(image).unsqueeze(0)
    with torch.no_grad():
        probs: list[float] = torch.softmax(model(x), dim=1)[0].tolist()
    return probs


def run_naive(
    video: Path,
    host: str,
    port: int,
    topic: str,
    arch: str = "resnet18",
    num_classes: int = 2,
    weights: str = "none",
    threads: int | None = None,
    max_frames: int | None = None,
) -> dict[str, Any]:
    """Classify and publish every frame of `video` the notebook way; return timings."""
    t_start = time.perf_counter()
    import cv2
    import torch

    model, transform = _torch_model(arch, num_classes, weights, threads), _transform()
    client = _connect(host, port)
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise SystemExit(f"{video}: cv2.VideoCapture cannot open it; pass an MP4 recording")
    frames, first_result_s, infer_ms = 0, None, []
    t_loop = time.perf_counter()
    while max_frames is None or frames < max_frames:
        ok, bgr = cap.read()
        if not ok:
            break
        capture_ts = time.time()
        t0 = time.perf_counter()
        probs = _classify(model, transform, bgr)
        infer_ms.append((time.perf_counter() - t0) * 1000)
        best = max(range(len(probs)), key=lambda i: probs[i])
        payload = json.dumps(
            {"frame_index": frames, "capture_ts": capture_ts, "index": best, "scores": probs}
        )
        client.publish(topic, payload, qos=1).wait_for_publish()
        frames += 1
        if first_result_s is None:
            first_result_s = time.perf_counter() - t_start
    t_end = time.perf_counter()
    cap.release()
    client.loop_stop()
    client.disconnect()
    infer_ms.sort()
    return {
        "frames": frames,
        "loop_s": t_end - t_loop,
        "fps": frames / (t_end - t_loop) if frames else 0.0,
        "first_result_s": first_result_s,
        "inference_ms_p50": infer_ms[len(infer_ms) // 2] if infer_ms else None,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "weights": weights,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--video", type=Path, required=True, help="MP4 recording")
    parser.add_argument("--broker", required=True, help="HOST:PORT of the MQTT broker")
    parser.add_argument("--topic", default="thermoscreen/naive/cam0/result", help="result topic")
    parser.add_argument("--arch", default="resnet18", help="torchvision architecture")
    parser.add_argument("--num-classes", type=int, default=2, help="classes of the model")
    parser.add_argument(
        "--weights", default="none", help="none (random, same architecture) or a .pth checkpoint"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after N frames")
    args = parser.parse_args(argv)
    try:
        host, port = parse_host_port(args.broker)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    stats = run_naive(
        args.video,
        host,
        int(port),
        args.topic,
        arch=args.arch,
        num_classes=args.num_classes,
        weights=args.weights,
        threads=args.threads,
        max_frames=args.max_frames,
    )
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
