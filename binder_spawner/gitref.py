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


def safe_config(allowed_schemes=("https",), pins=()):
    """git configuration for any git process that contacts a stranger's repository.

    (key, value) pairs:

    - ``protocol.allow=never`` with only ``allowed_schemes`` re-enabled (no
      ``file:``, ``ext::``, ``ssh:``), also for anything git would follow
      (submodules);
    - no credential helpers (``credential.helper=`` resets the list) and no
      askpass program, so no stored secret is ever sent to a stranger's host;
    - ``http.followRedirects=false``: a redirect could lead to an unchecked host;
    - ``http.curloptResolve`` pins ``host:port`` to the addresses that were
      checked (git >= 2.37), closing the DNS-rebinding window.
    """
    pairs = [("protocol.allow", "never")]
    pairs += [(f"protocol.{scheme}.allow", "always") for scheme in allowed_schemes]
    pairs += [
        ("credential.helper", ""),
        ("core.askPass", ""),
        ("http.followRedirects", "false"),
        ("protocol.version", "2"),
    ]
    pairs += [("http.curloptResolve", pin) for pin in pins]
    return pairs


def config_args(pairs):
    """``-c key=value`` arguments for :func:`safe_config` pairs."""
    args = []
    for key, value in pairs:
        args += ["-c", f"{key}={value}"]
    return args


def config_env(pairs):
    """The same configuration as environment variables (``GIT_CONFIG_COUNT``, git >= 2.31).

    For git processes started by another program (repo2docker in a build pod,
    a local clone): every git it runs inherits them.
    """
    env = {"GIT_CONFIG_COUNT": str(len(pairs))}
    for i, (key, value) in enumerate(pairs):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return env


def ls_remote_command(url, ref, *, allowed_schemes=("https",), pins=(), git="git"):
    """The argument list for resolving ``ref`` at ``url`` without trusting either.

    :func:`safe_config` as ``-c`` options, then ``ls-remote``, ``--`` and the
    positional arguments (the URL and the full ref names ``ref`` may stand for).
    """
    args = [git, *config_args(safe_config(allowed_schemes, pins))]
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
