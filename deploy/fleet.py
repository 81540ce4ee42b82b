"""Fleet deployments from the operator's side (issue #14): upload artifacts to S3, write the
deployment document with IoT Jobs presigned-URL placeholders, create the IoT job for a thing
or thing group, follow its executions, cancel it.

    python deploy/fleet.py [--region R] [--endpoint-url URL] COMMAND ...
    upload      --bucket B [--prefix P] FILE...            -> the document's artifact entries
    document    --bucket B --artifact NAME=PATH... [--base DOC] [--out FILE]
    create-job  --document FILE --job-id ID TARGET... [job options]
    deploy      document + create-job in one step, [--follow]
    status JOB [--json]      follow JOB [--timeout S]      cancel JOB [--force]

Exit status: 0 done (for follow/deploy --follow: the job COMPLETED and every execution
SUCCEEDED), 1 an error (one line on stderr) or a job that ended otherwise, 3 follow timed out.
Needs boto3 (`pip install '.[fleet]'`) and AWS credentials as boto3 finds them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python deploy/fleet.py`: make `deploy.` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy.fleet_aws import Fleet  # noqa: E402
from deploy.fleet_plan import (  # noqa: E402
    FleetError,
    JobOptions,
    Summary,
    artifact_name,
    build_document,
    document_text,
    job_request,
    parse_artifact_arg,
)

EXIT_OK, EXIT_FAILED, EXIT_TIMEOUT = 0, 1, 3


def _say(text: str) -> None:
    print(text, flush=True)


def _upload_artifacts(fleet: Fleet, args: argparse.Namespace,
                      named: list[tuple[str, Path]]) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {}
    for name, path in named:
        if name in entries:
            raise FleetError(f"--artifact {name}: given twice")
        entry, uploaded = fleet.upload(path, args.bucket, args.prefix, args.presign_v2)
        entries[name] = entry
        verb = "uploaded" if uploaded else "already in S3:"
        print(f"{verb} {path} ({entry['size']} bytes, sha256 {entry['sha256']})",
              file=sys.stderr)
    return entries


def _document(fleet: Fleet, args: argparse.Namespace) -> str:
    base = None
    if args.base:
        try:
            base = json.loads(Path(args.base).read_text())
        except (OSError, ValueError) as exc:
            raise FleetError(f"--base {args.base}: {exc}") from exc
        if not isinstance(base, dict):
            raise FleetError(f"--base {args.base}: must hold a JSON object")
    named = [parse_artifact_arg(a) for a in args.artifact]
    doc = build_document(base, _upload_artifacts(fleet, args, named), args.name)
    return document_text(doc)


def _job_options(fleet: Fleet, args: argparse.Namespace) -> JobOptions:
    targets = list(args.target)
    targets += [fleet.target_arn(thing=t) for t in args.thing]
    targets += [fleet.target_arn(group=g) for g in args.thing_group]
    return JobOptions(
        job_id=args.job_id, targets=targets, role_arn=args.role_arn,
        expires_in_s=args.expires_in, max_per_minute=args.max_per_minute,
        abort_failed_percent=args.abort_failed_percent,
        abort_min_executed=args.abort_min_executed,
        in_progress_timeout_min=args.in_progress_timeout, continuous=args.continuous,
        description=args.description)


def _create_job(fleet: Fleet, args: argparse.Namespace, text: str) -> int:
    request = job_request(_job_options(fleet, args), text)
    arn = fleet.create_job(request)
    _say(f"created {arn} for {', '.join(request['targets'])}")
    if getattr(args, "follow", False):
        return _follow(fleet, args.job_id, args.follow_timeout, args.interval)
    return EXIT_OK


def _follow(fleet: Fleet, job_id: str, timeout_s: float, interval_s: float) -> int:
    def report(summary: Summary) -> None:
        _say(summary.line())

    final = fleet.follow(job_id, timeout_s, interval_s, report)
    if final is None:
        print(f"job {job_id}: still running after {timeout_s:g} s; stopped following "
              "(the job goes on)", file=sys.stderr)
        return EXIT_TIMEOUT
    for line in final.unsuccessful:
        _say(f"  {line}")
    return EXIT_OK if final.succeeded else EXIT_FAILED


def run(args: argparse.Namespace) -> int:
    fleet = Fleet(args.region, args.endpoint_url)
    if args.command == "upload":
        named = [(artifact_name(Path(p)), Path(p)) for p in args.files]
        _say(json.dumps(_upload_artifacts(fleet, args, named), indent=1, sort_keys=True))
    elif args.command == "document":
        text = _document(fleet, args)
        if args.out:
            Path(args.out).write_text(text + "\n")
        else:
            _say(text)
    elif args.command == "create-job":
        try:
            text = Path(args.document).read_text()
        except OSError as exc:
            raise FleetError(f"--document {args.document}: {exc.strerror or exc}") from exc
        return _create_job(fleet, args, text)
    elif args.command == "deploy":
        text = _document(fleet, args)
        if args.out:
            Path(args.out).write_text(text + "\n")
        return _create_job(fleet, args, text)
    elif args.command == "status":
        summary = fleet.summary(args.job_id)
        if args.json:
            _say(json.dumps({"jobId": summary.job_id, "status": summary.status,
                             "executions": summary.counts,
                             "unsuccessful": summary.unsuccessful,
                             "reason": summary.reason}, sort_keys=True))
        else:
            _say(summary.line())
            for line in summary.unsuccessful:
                _say(f"  {line}")
    elif args.command == "follow":
        return _follow(fleet, args.job_id, args.timeout, args.interval)
    elif args.command == "cancel":
        fleet.cancel(args.job_id, args.force, args.comment, args.reason_code)
        _say(fleet.summary(args.job_id).line())
    return EXIT_OK


def _artifact_options(p: argparse.ArgumentParser, document: bool) -> None:
    p.add_argument("--bucket", required=True, help="S3 bucket for the artifacts")
    p.add_argument("--prefix", default="lichen/artifacts",
                   help="key prefix (default lichen/artifacts); keys are PREFIX/SHA256/NAME")
    p.add_argument("--presign-v2", action="store_true",
                   help="write ${aws:iot:s3-presigned-url-v2:...} placeholders")
    if document:
        p.add_argument("--artifact", action="append", default=[], metavar="NAME=PATH",
                       help="a file the document's config refers to as {\"artifact\": NAME}; "
                            ".zip/.tar.gz are bundles the gateway unpacks")
        p.add_argument("--base", metavar="DOC.json",
                       help="a deployment document (config, registry, health) to add to")
        p.add_argument("--name", help="the document's name, a label for people")
        p.add_argument("--out", metavar="FILE", help="write the document here")


def _job_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--job-id", required=True)
    p.add_argument("--thing", action="append", default=[], help="target a thing (repeatable)")
    p.add_argument("--thing-group", action="append", default=[],
                   help="target a thing group (repeatable)")
    p.add_argument("--target", action="append", default=[], metavar="ARN",
                   help="target a thing or thing group ARN (repeatable)")
    p.add_argument("--role-arn", help="role IoT assumes to presign the artifact URLs")
    p.add_argument("--expires-in", type=int, default=3600,
                   help="presigned URL lifetime, 60-3600 s (default 3600)")
    p.add_argument("--max-per-minute", type=int,
                   help="rollout: start at most N executions a minute (1-1000)")
    p.add_argument("--abort-failed-percent", type=float,
                   help="abort (cancel) the job when this %% of executed things FAILED")
    p.add_argument("--abort-min-executed", type=int, default=1,
                   help="... once at least this many things ran it (default 1)")
    p.add_argument("--in-progress-timeout", type=int, metavar="MINUTES",
                   help="an execution IN_PROGRESS this long becomes TIMED_OUT")
    p.add_argument("--continuous", action="store_true",
                   help="things added to a target group later get the job too")
    p.add_argument("--description")


def _follow_arguments(p: argparse.ArgumentParser, flag: bool) -> None:
    if flag:
        p.add_argument("--follow", action="store_true",
                       help="then follow the executions until the job is over")
    p.add_argument("--follow-timeout" if flag else "--timeout", type=float, default=3600.0,
                   dest="follow_timeout" if flag else "timeout",
                   help="stop following after this many seconds (default 3600)")
    p.add_argument("--interval", type=float, default=10.0,
                   help="seconds between polls (default 10)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="fleet.py", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--region", help="AWS region (default: boto3's, e.g. AWS_DEFAULT_REGION)")
    top.add_argument("--endpoint-url", help="one endpoint for S3 and IoT (a local stand-in)")
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("upload", help="upload files; print their artifact entries")
    _artifact_options(p, document=False)
    p.add_argument("files", nargs="+", metavar="FILE")

    p = sub.add_parser("document", help="upload artifacts and write the deployment document")
    _artifact_options(p, document=True)

    p = sub.add_parser("create-job", help="create an IoT job from a document file")
    p.add_argument("--document", required=True, metavar="FILE")
    _job_arguments(p)
    _follow_arguments(p, flag=True)

    p = sub.add_parser("deploy", help="document + create-job in one step")
    _artifact_options(p, document=True)
    _job_arguments(p)
    _follow_arguments(p, flag=True)

    p = sub.add_parser("status", help="one summary of a job's executions")
    p.add_argument("job_id", metavar="JOB")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("follow", help="print the summary as it changes until the job is over")
    p.add_argument("job_id", metavar="JOB")
    _follow_arguments(p, flag=False)

    p = sub.add_parser("cancel", help="cancel a job")
    p.add_argument("job_id", metavar="JOB")
    p.add_argument("--force", action="store_true",
                   help="also cancel executions already IN_PROGRESS")
    p.add_argument("--comment")
    p.add_argument("--reason-code")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return run(args)
    except FleetError as exc:
        print(f"fleet: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
