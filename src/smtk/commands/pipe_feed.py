"""``smtk pipe-feed``: feed a Pipe-mode channel's FIFOs from a directory or S3 prefix.

::

    smtk pipe-feed --channel train --source ./data/train --epochs 3
    smtk pipe-feed --channel train --source s3://bucket/train/ --epochs 1 \\
        --record-wrapper RecordIO --distribution ShardedByS3Key --host-index 0 --host-count 2

Exit status: 0 when every epoch was fed, 2 for bad arguments, 1 for a failure, and
128 + the signal number when stopped by SIGTERM or SIGINT (the FIFOs are removed).
"""

from __future__ import annotations

import argparse

from smtk import config, log
from smtk.errors import ConfigError, SmtkError
from smtk.log import configure
from smtk.paths import Paths
from smtk.pipefeed import PipeFeeder
from smtk.stop import Stop, signal_name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--channel", required=True, help="channel name; FIFOs are <data-dir>/<channel>_<epoch>"
    )
    parser.add_argument("--source", required=True, help="a directory, a file or an s3://bucket/prefix")
    parser.add_argument("--epochs", type=int, default=1, help="how many epochs to feed (default 1)")
    parser.add_argument(
        "--record-wrapper",
        choices=config.RECORD_WRAPPERS,
        default="None",
        help="RecordIO wraps each file in one RecordIO record (default None)",
    )
    parser.add_argument(
        "--data-dir",
        help="where the FIFOs go (default $SAGEMAKER_BASE_DIR/input/data, else /opt/ml/input/data)",
    )
    parser.add_argument(
        "--distribution",
        choices=config.DISTRIBUTION_TYPES,
        default="FullyReplicated",
        help="ShardedByS3Key gives this host every host-count-th file",
    )
    parser.add_argument("--host-index", type=int, default=0, help="this host's index, from 0 (default 0)")
    parser.add_argument("--host-count", type=int, default=1, help="number of hosts (default 1)")


def run(args: argparse.Namespace) -> int:

    configure()
    data_dir = args.data_dir or Paths.from_environ().input_data_dir
    try:
        feeder = PipeFeeder(
            args.channel,
            args.source,
            data_dir,
            args.epochs,
            record_wrapper=args.record_wrapper,
            distribution=args.distribution,
            host_index=args.host_index,
            host_count=args.host_count,
        )
        feeder.start()
    except ConfigError as exc:
        log.write("stderr", f"smtk pipe-feed: {exc}")
        return 2
    except SmtkError as exc:
        log.write("stderr", f"smtk pipe-feed: {exc}")
        return 1

    stop: Stop = args.stop
    unhook = stop.on_stop(lambda _signum: feeder.stop())
    try:
        while not feeder.wait(None):
            pass
    finally:
        feeder.stop()
        unhook()
    if stop.signum is not None:
        log.write(
            "stderr",
            f"smtk pipe-feed: stopped by {signal_name(stop.signum)} after "
            f"{feeder.epochs_done} of {args.epochs} epoch(s)",
        )
        return 128 + stop.signum
    if feeder.error is not None:
        return 2 if isinstance(feeder.error, ConfigError) else 1
    return 0
