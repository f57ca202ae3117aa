"""TF Serving configuration for an export base, and a check of the layout it expects.

Usage:

    python -m serving.tf_serving_config EXPORT_BASE --name NAME --out DIR
        [--base-path-in-server /models/NAME] [--all-versions | --latest N]
        [--max-batch-size 32] [--batch-timeout-micros 2000] [--max-enqueued-batches 64]
        [--num-batch-threads 2] [--allowed-batch-sizes 1,2,4,8,16,32] [--check-only]

Writes `DIR/models.config` (a `tensorflow.serving.ModelServerConfig` in protobuf text format)
and `DIR/batching_parameters.txt` (`tensorflow.serving.BatchingParameters`), after checking
that EXPORT_BASE has the layout `tensorflow_model_server` loads: integer version folders,
each with `saved_model.pb` and `variables/` (`variables.index` + data shards), and, if
present, `assets.extra/tf_serving_warmup_requests` as a TFRecord file of `PredictionLog`
records. Then prints the `tensorflow_model_server` and `docker run` commands. Both files are
built from the protos (tensorflow-serving-api) and written atomically.
"""

from __future__ import annotations

import argparse
import struct
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "ExportLayoutError",
    "batching_parameters",
    "check_export_layout",
    "docker_command",
    "model_server_command",
    "model_server_config",
    "read_tfrecords",
    "read_warmup_requests",
    "write_configs",
]

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # tensorflow_model_server reads at most this many warmup records


class ExportLayoutError(ValueError):
    """The export base does not have the layout TF Serving expects."""


# -- TFRecord reading (masked CRC32C as in tensorflow/core/lib/hash/crc32c) -------------------
def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_tfrecords(path: str | Path) -> Iterator[bytes]:
    """Yield the records of an uncompressed TFRecord file, verifying both checksums.

    Args:
        path: the file.

    Yields:
        Each record's bytes.

    Raises:
        ExportLayoutError: truncated file or checksum mismatch.

    Example:

    >>> import tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "empty.tfrecord")
    >>> _ = open(f, "wb").write(b"")
    >>> list(read_tfrecords(f))
    []
    """
    data = Path(path).read_bytes()
    pos, index = 0, 0
    while pos < len(data):
        if pos + 12 > len(data):
            raise ExportLayoutError(f"{path}: record {index} header is truncated.")
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        if _masked_crc(header) != length_crc:
            raise ExportLayoutError(f"{path}: record {index} has a bad length checksum; not a "
                                    "TFRecord file?")
        start, end = pos + 12, pos + 12 + length
        if end + 4 > len(data):
            raise ExportLayoutError(f"{path}: record {index} is truncated.")
        record = data[start:end]
        (data_crc,) = struct.unpack("<I", data[end:end + 4])
        if _masked_crc(record) != data_crc:
            raise ExportLayoutError(f"{path}: record {index} has a bad data checksum.")
        yield record
        pos, index = end + 4, index + 1


def read_warmup_requests(version_dir: str | Path) -> list[Any]:
    """Parse `assets.extra/tf_serving_warmup_requests` of a version folder.

    Args:
        version_dir: the version folder.

    Returns:
        The `tensorflow.serving.PredictionLog` messages.

    Raises:
        ExportLayoutError: missing file, bad TFRecord framing, unparseable or empty records.
    """
    from serving._protos import protos

    path = Path(version_dir) / WARMUP_FILE
    if not path.is_file():
        raise ExportLayoutError(f"Warmup file {path} does not exist.")
    logs = []
    for i, record in enumerate(read_tfrecords(path)):
        log = protos().prediction_log_pb2.PredictionLog()
        try:
            log.ParseFromString(record)
        except Exception as err:
            raise ExportLayoutError(f"{path}: record {i} is not a PredictionLog: {err}") from None
        if log.WhichOneof("log_type") is None:
            raise ExportLayoutError(f"{path}: record {i} is an empty PredictionLog.")
        logs.append(log)
    if not logs:
        raise ExportLayoutError(f"{path} holds no records.")
    if len(logs) > MAX_WARMUP_RECORDS:
        raise ExportLayoutError(f"{path} holds {len(logs)} records; TF Serving reads at most "
                                f"{MAX_WARMUP_RECORDS}.")
    return logs


def check_export_layout(export_base: str | Path, require_warmup: bool = True) -> list[int]:
    """Check that `export_base` is a model base path `tensorflow_model_server` can serve.

    Args:
        export_base: the folder with integer version subfolders.
        require_warmup: also require and parse `assets.extra/tf_serving_warmup_requests`.

    Returns:
        The version numbers, ascending.

    Raises:
        ExportLayoutError: with every problem found, one per line.

    Example:

    >>> check_export_layout("/nonexistent")
    Traceback (most recent call last):
    ...
    serving.tf_serving_config.ExportLayoutError: Export base '/nonexistent' is not a folder.
    """
    base = Path(export_base)
    if not base.is_dir():
        raise ExportLayoutError(f"Export base '{base}' is not a folder.")
    problems = []
    versions = []
    for child in sorted(base.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        if not child.name.isdigit():
            problems.append(f"{child}: version folder names must be integers; TF Serving "
                            "ignores this folder.")
            continue
        versions.append(int(child.name))
        if not (child / "saved_model.pb").is_file():
            problems.append(f"{child}: saved_model.pb is missing.")
        var = child / "variables"
        if not var.is_dir():
            problems.append(f"{child}: variables/ is missing.")
        elif not (var / "variables.index").is_file() or not list(
                var.glob("variables.data-*-of-*")):
            problems.append(f"{child}: variables/ needs variables.index and variables.data-* "
                            "shards.")
        if require_warmup:
            try:
                read_warmup_requests(child)
            except ExportLayoutError as err:
                problems.append(str(err))
    if not versions:
        problems.append(f"Export base '{base}' has no integer version folder.")
    if problems:
        raise ExportLayoutError("\n".join(problems))
    return sorted(versions)


# -- configuration protos --------------------------------------------------------------------
def model_server_config(name: str, base_path: str, latest: int | None = 1,
                        versions: Sequence[int] | None = None, all_versions: bool = False) -> Any:
    """A `ModelServerConfig` serving one model.

    Args:
        name: model name (the URL segment `/v1/models/NAME`).
        base_path: absolute base path as seen by the server (host path, or the container path
            such as `/models/NAME` for Docker).
        latest: serve the newest `latest` versions (TF Serving's default policy is 1).
        versions: serve exactly these versions instead.
        all_versions: serve every version instead.

    Returns:
        The `tensorflow.serving.ModelServerConfig` message.

    Example:

    >>> from google.protobuf import text_format
    >>> cfg = model_server_config("nrnn", "/models/nrnn")
    >>> cfg.model_config_list.config[0].model_version_policy.latest.num_versions
    1
    """
    from serving._protos import protos

    if not name or "/" in name or ":" in name:
        raise ValueError(f"Argument `name` must be non-empty without '/' or ':'; received "
                         f"{name!r}.")
    if not base_path.startswith("/"):
        raise ValueError(f"Argument `base_path` must be absolute; received {base_path!r}.")
    cfg = protos().model_server_config_pb2.ModelServerConfig()
    model = cfg.model_config_list.config.add()
    model.name = name
    model.base_path = base_path
    model.model_platform = "tensorflow"
    policy = model.model_version_policy
    if all_versions:
        policy.all.SetInParent()
    elif versions:
        policy.specific.versions.extend(int(v) for v in versions)
    else:
        if latest is None or latest < 1:
            raise ValueError(f"Argument `latest` must be >= 1; received {latest}.")
        policy.latest.num_versions = latest
    return cfg


def batching_parameters(max_batch_size: int = 32, batch_timeout_micros: int = 2000,
                        max_enqueued_batches: int = 64, num_batch_threads: int = 2,
                        allowed_batch_sizes: Sequence[int] | None = None,
                        pad_variable_length_inputs: bool = False) -> Any:
    """A `BatchingParameters` message for `--batching_parameters_file`.

    Args:
        max_batch_size: largest merged batch (>= 1).
        batch_timeout_micros: longest wait to fill a batch (>= 0).
        max_enqueued_batches: queue length in batches (>= 1).
        num_batch_threads: threads running batches (>= 1; number of cores).
        allowed_batch_sizes: increasing sizes ending at `max_batch_size`, or None.
        pad_variable_length_inputs: pad inputs of different lengths.

    Returns:
        The message.

    Example:

    >>> batching_parameters(max_batch_size=8, allowed_batch_sizes=[2, 8]).max_batch_size.value
    8
    """
    from serving._protos import batching_parameters_class

    for arg, value, low in (("max_batch_size", max_batch_size, 1),
                            ("batch_timeout_micros", batch_timeout_micros, 0),
                            ("max_enqueued_batches", max_enqueued_batches, 1),
                            ("num_batch_threads", num_batch_threads, 1)):
        if value < low:
            raise ValueError(f"Argument `{arg}` must be >= {low}; received {value}.")
    if allowed_batch_sizes:
        sizes = list(allowed_batch_sizes)
        if sizes != sorted(set(sizes)) or sizes[-1] != max_batch_size or sizes[0] < 1:
            raise ValueError(
                "Argument `allowed_batch_sizes` must be strictly increasing positive sizes "
                f"ending at max_batch_size={max_batch_size}; received {sizes}.")
    msg = batching_parameters_class()()
    msg.max_batch_size.value = max_batch_size
    msg.batch_timeout_micros.value = batch_timeout_micros
    msg.max_enqueued_batches.value = max_enqueued_batches
    msg.num_batch_threads.value = num_batch_threads
    if allowed_batch_sizes:
        msg.allowed_batch_sizes.extend(allowed_batch_sizes)
    msg.pad_variable_length_inputs = pad_variable_length_inputs
    return msg


def model_server_command(config_file: str, batching_file: str, rest_port: int = 8501,
                         grpc_port: int = 8500) -> list[str]:
    """The `tensorflow_model_server` command line for the generated files.

    Example:

    >>> " ".join(model_server_command("/cfg/models.config", "/cfg/batching_parameters.txt"))[:60]
    'tensorflow_model_server --port=8500 --rest_api_port=8501 --m'
    """
    return ["tensorflow_model_server", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
            f"--model_config_file={config_file}", "--enable_batching",
            f"--batching_parameters_file={batching_file}", "--file_system_poll_wait_seconds=2",
            "--enable_model_warmup=true"]


def docker_command(export_base: str, config_dir: str, name: str, rest_port: int = 8501,
                   grpc_port: int = 8500) -> list[str]:
    """The `docker run` command (tensorflow/serving image, export and config mounted read-only).

    Requires the files to be generated with `base_path=/models/NAME`.

    Example:

    >>> docker_command("/srv/export", "/srv/cfg", "nrnn")[:3]
    ['docker', 'run', '--rm']
    """
    return ["docker", "run", "--rm", "-p", f"127.0.0.1:{rest_port}:8501",
            "-p", f"127.0.0.1:{grpc_port}:8500",
            "--mount", f"type=bind,source={export_base},target=/models/{name},readonly",
            "--mount", f"type=bind,source={config_dir},target=/config,readonly",
            "tensorflow/serving:latest",
            "--model_config_file=/config/models.config", "--enable_batching",
            "--batching_parameters_file=/config/batching_parameters.txt",
            "--file_system_poll_wait_seconds=2", "--enable_model_warmup=true"]


def write_configs(export_base: str | Path, name: str, out_dir: str | Path,
                  base_path_in_server: str | None = None, check: bool = True,
                  **kwargs: Any) -> dict[str, Path]:
    """Check the export and write `models.config` and `batching_parameters.txt`.

    Args:
        export_base: the export base folder.
        name: model name.
        out_dir: where to write the two files.
        base_path_in_server: the base path the server sees (default: absolute `export_base`;
            use `/models/NAME` for the Docker command).
        check: run `check_export_layout` first.
        **kwargs: `latest`, `versions`, `all_versions` for the version policy, and the
            arguments of `batching_parameters`.

    Returns:
        `{"models.config": path, "batching_parameters.txt": path}`.
    """
    from google.protobuf import text_format

    from atomic_io import atomic_write_text

    if check:
        check_export_layout(export_base)
    policy = {k: kwargs.pop(k) for k in ("latest", "versions", "all_versions") if k in kwargs}
    base_path = base_path_in_server or str(Path(export_base).resolve())
    cfg = model_server_config(name, base_path, **policy)
    batching = batching_parameters(**kwargs)
    out = Path(out_dir)
    paths = {
        "models.config": atomic_write_text(out / "models.config",
                                           text_format.MessageToString(cfg)),
        "batching_parameters.txt": atomic_write_text(out / "batching_parameters.txt",
                                                     text_format.MessageToString(batching)),
    }
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m serving.tf_serving_config` (see the module docstring).

    Args:
        argv: arguments (default: `sys.argv[1:]`).

    Returns:
        0 on success, 1 when the export layout is wrong.
    """
    ap = argparse.ArgumentParser(prog="python -m serving.tf_serving_config",
                                 description="Write TF Serving models.config and batching "
                                             "parameters for an export base.")
    ap.add_argument("export_base", type=Path)
    ap.add_argument("--name", required=True, help="model name")
    ap.add_argument("--out", type=Path, default=None, help="output folder (required unless "
                                                            "--check-only)")
    ap.add_argument("--base-path-in-server", default=None,
                    help="base path as the server sees it (e.g. /models/NAME in Docker)")
    pol = ap.add_mutually_exclusive_group()
    pol.add_argument("--latest", type=int, default=1, help="serve the newest N versions")
    pol.add_argument("--all-versions", action="store_true")
    pol.add_argument("--versions", default=None, help="comma-separated versions to serve")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--batch-timeout-micros", type=int, default=2000)
    ap.add_argument("--max-enqueued-batches", type=int, default=64)
    ap.add_argument("--num-batch-threads", type=int, default=2)
    ap.add_argument("--allowed-batch-sizes", default=None, help="e.g. 1,2,4,8,16,32")
    ap.add_argument("--check-only", action="store_true", help="only check the layout")
    args = ap.parse_args(argv)
    try:
        versions = check_export_layout(args.export_base)
    except ExportLayoutError as err:
        print(f"Export layout problems:\n{err}", file=sys.stderr)
        return 1
    print(f"{args.export_base}: versions {versions} have the layout TF Serving expects.")
    if args.check_only:
        return 0
    if args.out is None:
        ap.error("--out is required unless --check-only is given")
    try:
        paths = write_configs(
            args.export_base, args.name, args.out, args.base_path_in_server, check=False,
            latest=args.latest, all_versions=args.all_versions,
            versions=[int(v) for v in args.versions.split(",")] if args.versions else None,
            max_batch_size=args.max_batch_size, batch_timeout_micros=args.batch_timeout_micros,
            max_enqueued_batches=args.max_enqueued_batches,
            num_batch_threads=args.num_batch_threads,
            allowed_batch_sizes=[int(s) for s in args.allowed_batch_sizes.split(",")]
            if args.allowed_batch_sizes else None)
    except ValueError as err:
        ap.error(str(err))
    for p in paths.values():
        print(f"wrote {p}")
    out = args.out.resolve()
    if args.base_path_in_server is None:
        print("\nRun:\n  " + " ".join(model_server_command(
            str(out / "models.config"), str(out / "batching_parameters.txt"))))
    elif args.base_path_in_server == f"/models/{args.name}":
        print("\nDocker:\n  " + " ".join(docker_command(str(args.export_base.resolve()),
                                                         str(out), args.name)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
