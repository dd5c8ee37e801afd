"""Git refs from strangers: syntax rules, the ``git ls-remote`` command line, its output.

Pure functions; :class:`binder_spawner.repos.RepoPolicy` runs the command.
The rules are those of ``git check-ref-format`` plus: no leading ``-`` (no
argument injection, even though every git call also puts ``--`` before
positional arguments), no whitespace or control characters, and a length cap.
"""

import re

SHA1 = re.compile(r"^[0-9a-f]{40}$")
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|\s")

#: Longest ref accepted (git itself allows more; no real branch needs it).
MAX_REF_LENGTH = 255


def is_full_sha(ref):
    return bool(SHA1.match(ref))


def ref_problem(ref):
    """Why ``ref`` is not an acceptable branch, tag or commit (a sentence), or None."""
    if not ref:
        return "The ref is empty."
    if len(ref) > MAX_REF_LENGTH:
        return f"The ref is longer than {MAX_REF_LENGTH} characters."
    if ref.startswith("-"):
        return "A ref must not start with '-'."
    if ref == "@" or _FORBIDDEN.search(ref):
        return "The ref contains characters git does not allow in branch or tag names."
    if ref.startswith("/") or ref.endswith("/") or ref.endswith("."):
        return "The ref is not a valid git branch or tag name."
    for part in ref.split("/"):
        if part.startswith(".") or part.endswith(".lock"):
            return "The ref is not a valid git branch or tag name."
    return None


def normalise_ref(ref):
    """Full SHAs in lower case; everything else unchanged."""
    if len(ref) == 40 and SHA1.match(ref.lower()):
        return ref.lower()
    return ref


def candidate_refs(ref):
    """The full ref names ``ref`` may stand for, most preferred first.

    ``HEAD`` is the default branch. A ``refs/...`` name is taken as it is.
    Otherwise a branch wins over a tag of the same name (what ``git checkout``
    picks), then the tag.
    """
    if ref == "HEAD":
        return ["HEAD"]
    if ref.startswith("refs/"):
        return [ref]
    return [f"refs/heads/{ref}", f"refs/tags/{ref}"]


def ls_remote_command(url, ref, *, allowed_schemes=("https",), pins=(), git="git"):
    """The argument list for resolving ``ref`` at ``url`` without trusting either.

    - ``protocol.allow=never`` with only ``allowed_schemes`` re-enabled (no
      ``file:``, ``ext::``, ``ssh:``), also for anything git would follow;
    - no credential helpers (``credential.helper=`` resets the list), so no
      stored secret is ever sent to a stranger's host;
    - ``http.followRedirects=false``: a redirect could lead to an unchecked host;
    - ``http.curloptResolve`` pins ``host:port`` to the addresses that were
      checked (git >= 2.37), closing the DNS-rebinding window;
    - ``--`` before the positional arguments.
    """
    args = [
        git,
        "-c",
        "protocol.allow=never",
    ]
    for scheme in allowed_schemes:
        args += ["-c", f"protocol.{scheme}.allow=always"]
    args += [
        "-c",
        "credential.helper=",
        "-c",
        "core.askPass=",
        "-c",
        "http.followRedirects=false",
        "-c",
        "protocol.version=2",
    ]
    for pin in pins:
        args += ["-c", f"http.curloptResolve={pin}"]
    args += ["ls-remote", "--", url]
    for name in candidate_refs(ref):
        args.append(name)
        if name.startswith("refs/tags/"):
            args.append(name + "^{}")  # the commit an annotated tag points to
    return args


def parse_ls_remote(output):
    """``git ls-remote`` output to {ref name: sha}; peeled tags (``^{}``) win over tag objects."""
    refs = {}
    peeled = {}
    for line in output.splitlines():
        sha, _, name = line.partition("\t")
        sha = sha.strip()
        name = name.strip()
        if not SHA1.match(sha) or not name:
            continue
        if name.endswith("^{}"):
            peeled[name[:-3]] = sha
        else:
            refs[name] = sha
    refs.update(peeled)
    return refs


def pick_commit(refs, ref):
    """The commit ``ref`` resolves to in ``refs`` (from :func:`parse_ls_remote`), or None."""
    for name in candidate_refs(ref):
        if name in refs:
            return refs[name]
    return None
