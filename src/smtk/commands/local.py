"""``smtk local``: run a training job on this machine, as the platform would.

::

    smtk local --source-dir examples/quickstart --entry-point train.py \\
        --channel train=examples/quickstart/data --hyperparameter epochs=20
    smtk local --spec job.json [--instance-count 2] [--image my-image]

It lays out one ``/opt/ml`` tree per host under ``--job-dir`` (default
``smtk-jobs/<job-name>-<YYYYmmdd-HHMMSS>``), runs ``train`` for each host, streams the logs and prints
where ``model/``, ``output/data`` and the failure reason are. Its exit status is the
job's.
"""

from __future__ import annotations

import argparse
import os

from smtk import log
from smtk.errors import ConfigError, SmtkError
from smtk.local.container import gpu_args
from smtk.local.runner import run_job
from smtk.local.spec import (
    JobSpec,
    default_job_dir,
    encode_hyperparameter,
    load_spec,
    merged,
    parse_channel_flag,
    parse_pairs,
    resolve_location,
)
from smtk.stop import Stop, Stopped

DESCRIPTION = __doc__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--spec", metavar="FILE", help="a CreateTrainingJob-shaped JSON job spec")
    parser.add_argument("--source-dir", metavar="DIR", help="the directory holding the training code")
    parser.add_argument(
        "--entry-point", metavar="FILE", help="the script (or module) to run, inside --source-dir"
    )
    parser.add_argument(
        "-H",
        "--hyperparameter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a hyperparameter; JSON values (3, 0.1, true, [1,2]) keep their type (repeatable)",
    )
    parser.add_argument(
        "--channel",
        action="append",
        default=[],
        metavar="NAME=PATH[:MODE]",
        help="a data channel from a local path or s3:// prefix; MODE is File (default), FastFile or Pipe",
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="job environment variable"
    )
    parser.add_argument(
        "--instance-type", help="instance type recorded in resourceconfig.json (default: local)"
    )
    parser.add_argument("--instance-count", type=int, help="number of hosts (algo-1 ... algo-N)")
    parser.add_argument("--job-name", help="training job name (TRAINING_JOB_NAME)")
    parser.add_argument("--job-dir", metavar="DIR", help="where the hosts' /opt/ml trees go")
    parser.add_argument(
        "--max-run", type=float, metavar="SECONDS", help="stop the job with SIGTERM after this"
    )
    parser.add_argument("--image", help="run `IMAGE train` in a container (podman or docker)")
    parser.add_argument(
        "--gpus", metavar="all|N|0,1", help="GPUs for the --image container (docker --gpus, podman CDI)"
    )
    parser.add_argument("--checkpoint-s3", metavar="URI", help="sync /opt/ml/checkpoints with this S3 prefix")
    parser.add_argument("--output-s3", metavar="URI", help="sync output/intermediate to this S3 prefix")
    parser.add_argument(
        "--output-path",
        metavar="URI",
        help="store model.tar.gz and output.tar.gz under URI/JOB/output (s3://, file:// or a directory)",
    )
    parser.add_argument(
        "--pipe-epochs", type=int, metavar="N", help="feed Pipe channels for N epochs (default: all)"
    )


def _build_spec(args: argparse.Namespace) -> JobSpec:

    spec = load_spec(args.spec) if args.spec else None
    if args.gpus and not (args.image or (spec is not None and spec.image)):
        raise ConfigError(
            "smtk local",
            "--gpus",
            "--image (without a container every GPU is visible; choose with CUDA_VISIBLE_DEVICES)",
            args.gpus,
        )
    if args.gpus:
        gpu_args("docker", args.gpus)  # checked now, not after the job is laid out
    return merged(
        spec,
        caller="smtk local",
        names={"spec": "--spec FILE", "entry_point": "--entry-point", "instance_count": "--instance-count"},
        entry_point=args.entry_point,
        job_name=args.job_name,
        hyperparameters={
            k: encode_hyperparameter(v)
            for k, v in parse_pairs(args.hyperparameter, "--hyperparameter").items()
        },
        channels=[parse_channel_flag(c) for c in args.channel],
        environment=parse_pairs(args.env, "--env"),
        instance_count=args.instance_count,
        source_dir=os.path.abspath(args.source_dir) if args.source_dir else None,
        instance_type=args.instance_type,
        max_runtime=args.max_run,
        image=args.image,
        gpus=args.gpus,
        checkpoint_s3=args.checkpoint_s3,
        output_s3=args.output_s3,
        output_path=resolve_location(args.output_path, os.getcwd()) if args.output_path else None,
    )


def run(args: argparse.Namespace) -> int:

    log.configure()
    stop: Stop = args.stop
    try:
        spec = _build_spec(args)
        job_dir = args.job_dir or default_job_dir(spec.job_name)
        return run_job(spec, job_dir, stop=stop, pipe_epochs=args.pipe_epochs).exit_status
    except Stopped as stopped:
        log.write("stderr", f"smtk local: {stopped}")
        return stopped.exit_status
    except SmtkError as exc:
        log.write("stderr", f"smtk local: {exc}")
        return exc.exit_status
