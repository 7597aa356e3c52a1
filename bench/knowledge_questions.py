"""Hand-written questions for judging knowledge-base retrieval on man pages.

The corpus is the man pages in ``PAGES``: section 1 and 8 pages installed on
this machine, rendered by man(1) at 100 columns without hyphenation
(``render``) and turned into Markdown-like text, one document per page. Pages
longer than about 3,000 rendered lines (bash, curl, rsync, tmux, gpg) are left
out.

``QUESTIONS`` holds ``(question, page, answer)`` tuples, written by hand against
those rendered pages. A question is phrased the way someone would ask a chat
assistant, in their own words rather than the page's; ``page`` is the man page
that answers it, and ``answer`` is a short exact passage of ``render(page)``
(whitespace-normalized: runs of whitespace become one space) taken from the
part of the page that answers it. A retrieved chunk counts as relevant to a
question when it comes from ``page`` and its text, whitespace-normalized,
contains ``answer``.

    python3 bench/knowledge_questions.py    # checks every answer against its page
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

PAGES = (
    "ls", "cp", "mv", "rm", "ln", "touch", "mkdir", "chmod", "chown", "stat",
    "du", "df", "find", "file", "grep", "sed", "sort", "uniq", "cut", "tr",
    "head", "tail", "wc", "split", "tee", "xargs", "diff", "patch", "base64",
    "sha256sum", "date", "env", "nice", "timeout", "watch", "tar", "gzip",
    "xz", "zip", "unzip", "dd", "ps", "top", "kill", "pgrep", "free",
    "uptime", "uname", "id", "su", "passwd", "useradd", "mount", "lsblk",
    "lsof", "journalctl", "systemctl", "ssh", "scp", "ssh-keygen", "wget",
    "git", "make", "less", "psql", "jq",
)


def render(page: str) -> str:
    """The page as man(1) shows it at 100 columns, as Markdown-like text.

    ``--nh --nj``: no hyphenation and no justification, so that no word is split
    across two lines ("alpha-" / "betically") and no spaces are padded in.
    """
    env = dict(os.environ, MANWIDTH="100", LANG="C.UTF-8")
    man = ["man", "--nh", "--nj", "-P", "cat", page]
    shown = subprocess.run(man, env=env, capture_output=True, check=True).stdout
    plain = subprocess.run(["col", "-bx"], input=shown, capture_output=True, check=True).stdout
    lines = plain.decode("utf-8", "replace").splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    out = []
    for line in lines[1:-1]:  # the header and footer lines, "TAR(1)  GNU TAR Manual  TAR(1)"
        line = line.rstrip()
        if line and not line[0].isspace():  # a section heading: NAME, SYNOPSIS, OPTIONS...
            out.append("## " + line.title())
        elif re.match(r"   \S", line) and len(line) <= 80:  # a subsection heading
            out.append("### " + line.strip())
        else:
            out.append(line.strip())
    return "\n".join(out) + "\n"


QUESTIONS = [
    # files and directories
    ("how can I list the files in a folder with the most recently changed ones first?",
     "ls", "sort by time, newest first"),
    ("why don't my dotfiles show up when I list a directory, and how do I see them?",
     "ls", "do not ignore entries starting with ."),
    ("how do I copy a whole folder, including everything inside it?",
     "cp", "copy directories recursively"),
    ("when copying files, how do I make sure nothing already at the destination gets clobbered?",
     "cp", "do not overwrite an existing file (overrides"),
    ("can mv ask me first before it replaces a file that has the same name?",
     "mv", "prompt before overwrite"),
    ("how do I delete a directory that isn't empty, subfolders and all?",
     "rm", "remove directories and their contents recursively"),
    ("how do I create a shortcut to a file, a soft link rather than a hard one?",
     "ln", "make symbolic links instead of hard links"),
    ("I want to backdate a file's modification time to a specific date, how?",
     "touch", "parse STRING and use it instead of current time"),
    ("create a/b/c in one go, without an error if part of the path is already there",
     "mkdir", "no error if existing, make parent directories as needed"),
    ("how do I apply a permission change to a folder and everything below it?",
     "chmod", "change files and directories recursively"),
    ("what does the sticky bit actually do on a shared directory like /tmp?",
     "chmod", "prevents unprivileged users from removing or renaming"),
    ("give a file the same owner and group as some other file I already have",
     "chown", "use RFILE's owner and group rather than specifying"),
    ("is there a way to see when a file was originally created?",
     "stat", "time of file birth, human-readable"),
    ("how big is this folder in total? I don't want every subdirectory listed",
     "du", "display only a total for each argument"),
    ("the disk says it's full but df shows free space; how do I check whether I ran out of inodes?",
     "df", "list inode information instead of block usage"),
    ("find the files that were modified within the last week",
     "find", "last modified less than, more than or exactly n*24 hours ago"),
    ("how do I locate empty files and empty folders under a path?",
     "find", "File is empty and is either a regular file or a directory"),
    ("this file has no extension; how can I tell whether it's an image, a script or a binary?",
     "file", "tests each argument in an attempt to classify it"),

    # text
    ("search for a word in a file no matter how it's capitalized",
     "grep", "Ignore case distinctions in patterns and input data"),
    ("show me only the lines that do NOT contain a certain pattern",
     "grep", "Invert the sense of matching, to select non-matching lines"),
    ("grepping a project recursively, how do I limit it to *.py files?",
     "grep", "Search only files whose base name matches GLOB"),
    ("replace a string inside a file directly with sed, without writing a temp file",
     "sed", "edit files in place (makes backup if SUFFIX supplied)"),
    ("sorting the output of du -h puts 2G before 900M; how do I sort those sizes properly?",
     "sort", "compare human readable numbers (e.g., 2K 1G)"),
    ("how do I count how many times each distinct line appears?",
     "uniq", "prefix lines by the number of occurrences"),
    ("pull the second column out of a colon-separated file like /etc/passwd",
     "cut", "use DELIM instead of TAB for field delimiter"),
    ("collapse runs of repeated spaces in some text down to a single space",
     "tr", "with a single occurrence of that character"),
    ("print just the first 100 bytes of a file",
     "head", "print the first NUM bytes of each file"),
    ("keep watching a log file and print new lines as they're written",
     "tail", "output appended data as the file grows"),
    ("tail -f stops showing anything after the log gets rotated; how do I keep following it?",
     "tail", "track the named file in a way that accommodates renaming"),
    ("how many lines are in this file?",
     "wc", "print the newline counts"),
    ("chop a huge file into pieces of 100 MB each",
     "split", "put SIZE bytes per output file"),
    ("see a command's output on the terminal and also add it to the end of a log file",
     "tee", "append to the given FILEs, do not overwrite"),
    ("file names with spaces break my find | xargs pipeline, what's the fix?",
     "xargs", "Input items are terminated by a null character"),
    ("run a command over a list of inputs, 4 at a time in parallel",
     "xargs", "Run up to max-procs processes at a time"),
    ("get a diff in the unified format with a few lines of context around each change",
     "diff", "output NUM (default 3) lines of unified context"),
    ("a patch has paths like a/src/x.c and b/src/x.c; how do I apply it without those prefixes?",
     "patch", "Strip the smallest prefix containing num leading slashes"),
    ("base64 breaks its output into lines; how do I get it all on one line?",
     "base64", "Use 0 to disable line wrapping"),
    ("verify a bunch of downloads against the SHA256SUMS file that came with them",
     "sha256sum", "read checksums from the FILEs and check them"),
    ("turn a unix timestamp like 1700000000 into a readable date",
     "date", "Convert seconds since the Epoch (1970-01-01 UTC) to a date"),
    ("my script's #! line needs an interpreter plus flags; can env pass several arguments?",
     "env", "pass multiple arguments on shebang lines"),

    # running programs
    ("start a long batch job at a lower CPU priority so it doesn't slow the machine down",
     "nice", "Run COMMAND with an adjusted niceness"),
    ("give a command 30 seconds, and hard-kill it if it ignores the first signal",
     "timeout", "also send a KILL signal if COMMAND is still running"),
    ("what exit code do I get when a command runs out of time under timeout?",
     "timeout", "124 if COMMAND times out"),
    ("rerun a command every couple of seconds and highlight what changed between runs",
     "watch", "Highlight the differences between successive updates"),

    # archives and compression
    ("how do I make an archive of a folder compressed with gzip?",
     "tar", "Filter the archive through gzip(1)."),
    ("unpack a tarball into some other directory instead of the current one",
     "tar", "Change to DIR before performing any operations."),
    ("the tarball has everything under one top-level folder; how do I extract without that folder?",
     "tar", "Strip NUMBER leading components from file names"),
    ("compress a file but keep the uncompressed original too",
     "gzip", "Keep (don't delete) input files during compression"),
    ("xz is slow; can it use all my CPU cores?",
     "xz", "Specify the number of worker threads to use."),
    ("how do I put a password on a zip file?",
     "zip", "Encrypt the contents of the zip archive using a password"),
    ("extract a .zip into a particular folder",
     "unzip", "An optional directory to which to extract files."),
    ("writing an ISO to a USB stick shows nothing for ages; can dd report how far along it is?",
     "dd", "'progress' shows periodic transfer statistics"),

    # processes and the system
    ("how do I list every process running on the box?",
     "ps", "To see every process on the system using standard syntax"),
    ("capture top's output into a file from a script, not interactively",
     "top", "Starts top in Batch mode"),
    ("which signal gets sent if I kill a PID without saying which one?",
     "kill", "The default signal for kill is TERM."),
    ("find the PID of a python script by its script name, not just 'python'",
     "pgrep", "When -f is set, the full command line is used"),
    ("what's the difference between the free and available memory columns?",
     "free", "how much memory is available for starting new applications"),
    ("is a load average of 1 bad on a machine with 4 CPUs?",
     "uptime", "Load averages are not normalized for the number of CPUs"),
    ("which kernel version is this machine running?",
     "uname", "print the kernel release"),
    ("list all the groups my user belongs to",
     "id", "print all group IDs"),
    ("become another user with a full login environment, as if they had logged in",
     "su", "Start the shell as a login shell"),
    ("force a user to choose a new password the next time they log in",
     "passwd", "Immediately expire an account's password."),
    ("add a new user and make sure they get a home directory",
     "useradd", "Create the user's home directory if it does not exist."),
    ("mount a disk so that nothing can be written to it",
     "mount", "Mount the filesystem read-only. A synonym is -o ro."),
    ("make the contents of one folder also appear at a second path",
     "mount", "Remount part of the file hierarchy somewhere else."),
    ("show my disks and partitions along with their filesystem type and UUID",
     "lsblk", "Output info about filesystems."),
    ("which process has a network connection open or is listening on a port?",
     "lsof", "any of whose Internet address matches the address"),
    ("get only the PIDs of the processes using a file, so I can pipe them into kill",
     "lsof", "produce terse output comprising only process identifiers"),
    ("how do I read the logs of just one systemd service?",
     "journalctl", "Show messages for the specified systemd unit UNIT"),
    ("the system logs are eating my disk; how do I delete the old ones?",
     "journalctl", "removes the oldest archived journal files"),
    ("make a service start automatically when the machine boots",
     "systemctl", "Enable one or more units or unit instances."),
    ("I edited a unit file; how do I get systemd to notice the change?",
     "systemctl", "Reload the systemd manager configuration."),

    # network and remote
    ("reach a database on a remote server through an ssh tunnel from a port on my laptop",
     "ssh", "Unix socket on the local (client) host are to be forwarded"),
    ("connect to a server that is only reachable through a bastion host",
     "ssh", "making a ssh connection to the jump host"),
    ("ssh login fails and I don't know why; how do I see what's going on?",
     "ssh", "Causes ssh to print debugging messages about its progress."),
    ("copy files to a server whose ssh daemon listens on port 2222",
     "scp", "Specifies the port to connect to on the remote host."),
    ("a server was reinstalled and I get a host key warning; how do I drop its known_hosts entry?",
     "ssh-keygen", "Removes all keys belonging to the specified hostname"),
    ("my download died halfway; can I pick up where it stopped instead of starting over?",
     "wget", "Continue getting a partially-downloaded file."),

    # development tools
    ("run a git command against a repository in another directory without cd-ing there",
     "git", "Run as if git was started in <path> instead of the current"),
    ("speed up a build by using all cores",
     "make", "number of jobs (commands) to run simultaneously"),
    ("while viewing a file in less, can it keep reading as the file grows, like tail -f?",
     "less", "keep trying to read when the end of file is reached"),
    ("run a single SQL query against Postgres from a shell script, without the interactive prompt",
     "psql", "Specifies that psql is to execute the given command string"),
    ("rows with many columns are unreadable in psql; can I show each row vertically?",
     "psql", "Sets or toggles expanded table formatting mode."),
    ("print the strings from jq without the surrounding double quotes",
     "jq", "rather than being formatted as a JSON string with quotes"),
    ("keep only the array elements whose field matches a value in jq",
     "jq", "produces its input unchanged if foo returns true"),
]


def normalize(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":
    texts = {page: normalize(render(page)) for page in PAGES}
    failures = []
    for question, page, answer in QUESTIONS:
        if page not in texts:
            failures.append(f"{page!r} is not in PAGES: {question}")
        elif normalize(answer) != answer:
            failures.append(f"{page}: answer is not whitespace-normalized: {answer!r}")
        elif answer not in texts[page]:
            failures.append(f"{page}: {answer!r} not found ({question})")
    print(f"{len(texts)} pages rendered, {len(QUESTIONS)} questions checked, "
          f"{len(failures)} failures")
    for failure in failures:
        print("  " + failure)
    sys.exit(1 if failures else 0)
