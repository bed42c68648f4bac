"""A real RTSP camera stand-in for tests: GStreamer's RTSP server with basic authentication,
serving a live test pattern at rtsp://USER:PASSWORD@127.0.0.1:PORT/live.

Run as a process (`python -m tests.helpers.rtsp_server PORT USER PASSWORD`) so a test can stop it
like a camera that goes away. Needs gir1.2-gst-rtsp-server-1.0.
"""

from __future__ import annotations

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

STREAM = (
    "( videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width=96,height=64,"
    "framerate=10/1 "
    "! jpegenc ! rtpjpegpay name=pay0 pt=26 )"
)


def serve(port: int, user: str, password: str) -> None:
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(STREAM)
    factory.set_shared(True)
    factory.add_role_from_structure(
        Gst.Structure.from_string(
            "viewer, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
        )[0]
    )
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string("media.factory.role", "viewer")
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
    server.set_auth(auth)
    server.get_mount_points().add_factory("/live", factory)
    if server.attach(None) == 0:
        raise SystemExit(f"cannot listen on 127.0.0.1:{port}")
    print("serving", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2], sys.argv[3])
