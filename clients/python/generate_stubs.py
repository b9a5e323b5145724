"""Generates the gRPC stubs in quarry/_proto from ../../proto/quarry.proto.

Run it after changing the proto (`python generate_stubs.py`); the test suite checks
that the committed stubs match the proto (`python generate_stubs.py --check`).
"""

import filecmp
import pathlib
import sys
import tempfile

from grpc_tools import protoc

HERE = pathlib.Path(__file__).resolve().parent
PROTO_DIR = HERE.parent.parent / "proto"
STUBS = ("quarry_pb2.py", "quarry_pb2.pyi", "quarry_pb2_grpc.py")


def generate(out: pathlib.Path) -> None:
    # Mapping the proto into the package path makes the stubs import each other as
    # `quarry._proto.quarry_pb2`.
    args = [
        "protoc",
        f"--proto_path=quarry/_proto={PROTO_DIR}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        "quarry/_proto/quarry.proto",
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> int:
    if "--check" in sys.argv:
        with tempfile.TemporaryDirectory() as tmp:
            generate(pathlib.Path(tmp))
            stale = [
                name
                for name in STUBS
                if not filecmp.cmp(pathlib.Path(tmp) / "quarry/_proto" / name, HERE / "quarry/_proto" / name, shallow=False)
            ]
        if stale:
            print(f"stubs out of date: {', '.join(stale)}; run python generate_stubs.py", file=sys.stderr)
            return 1
        return 0
    generate(HERE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
