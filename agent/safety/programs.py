"""What programs do with their arguments: the rules agent.safety.shell applies to each command it reads.

A command arrives here as expanded words (``Word``: text with UNKNOWN where a part is only known at run time).
Tables name the programs by what they can do (shells, interpreters, downloaders, decoders, privilege, power,
disk wipers, keystroke injectors, wrappers that run another command); ``ProgramRules`` holds one ``p_<name>``
rule per program judged by its arguments (rm, find, dd, chmod, systemctl, kill, git, sed, awk, ...) and the
ways a program can run code (``sh -c``, ``python -c``, a script file, standard input). It is mixed into the
judge of agent.safety.shell, which provides ``flag``, ``sub`` (judge shell code), ``run`` and ``state``.
"""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from agent.safety.shell import ShellState

Effect = Literal["allow", "confirm", "deny"]
UNKNOWN = "\x00"  # marks text computed at run time inside an expanded word
COMPLETION = "\x01"  # where tab completion inserted text nobody saw (agent.safety.line)


@dataclass
class Finding:
    effect: Effect
    rule: str
    reason: str


@dataclass
class FileNote:
    """What the session wrote into a file: known text, or ``None`` when it came from elsewhere."""

    text: str | None
    source: str = ""  # "downloaded", "decoded", "written by a command"


@dataclass(frozen=True)
class Word:
    """One field after expansion. ``text`` holds UNKNOWN where a part is computed at run time."""

    text: str
    glob: bool = False

    @property
    def known(self) -> bool:
        return UNKNOWN not in self.text and COMPLETION not in self.text

    def __str__(self) -> str:
        return self.text.replace(UNKNOWN, "?").replace(COMPLETION, "?")


# ---- paths -------------------------------------------------------------------------------------------------
_SYSTEM_DIRS = ("/etc", "/boot", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/sys", "/proc",
                "/var/lib", "/var/spool/cron", "/opt", "/srv", "/snap")
_HARMLESS_DEVICES = {"/dev/null", "/dev/zero", "/dev/stdout", "/dev/stderr", "/dev/stdin", "/dev/tty",
                     "/dev/random", "/dev/urandom", "/dev/full"}
_HOME_FILES = re.compile(r"^~/(\.bashrc|\.bash_profile|\.profile|\.bash_login|\.bash_logout|\.zshrc|\.ssh(/|$)|"
                         r"\.config/autostart)")


def path_class(text: str) -> str:
    """root | home | system | device | startup | unknown | plain: how much writing or deleting there matters."""
    if UNKNOWN in text or COMPLETION in text:
        return "unknown"
    if text.startswith("$HOME"):
        text = "~" + text[5:]
    p = re.sub(r"/+", "/", text)
    p = re.sub(r"(/\.)+(/|$)", "/", p)
    if p in ("/", "/*", "/.", "/..") or re.fullmatch(r"/\*?(\.\*)?", p):
        return "root"
    if re.fullmatch(r"~[A-Za-z0-9_.-]*/?\*?|/root/?\*?|/home/?\*?|/home/[^/]+/?\*?", p):
        return "home"
    if _HOME_FILES.match(p) or re.match(r"^/root/(\.bashrc|\.profile|\.ssh)", p):
        return "startup"
    if p.startswith("/dev/"):
        if p in _HARMLESS_DEVICES or p.startswith(("/dev/fd/", "/dev/pts/", "/dev/shm/")):
            return "plain"
        return "device"
    stripped = p.rstrip("/")
    if any(stripped == d or stripped.startswith(d + "/") for d in _SYSTEM_DIRS):
        if stripped.startswith("/proc/") and not stripped.startswith(("/proc/sys", "/proc/sysrq-trigger")):
            return "plain"
        return "system"
    return "plain"


def _file_key(path: str) -> list[str]:
    p = posixpath.normpath(path.replace("$HOME", "~")) if path else path
    return [p, posixpath.basename(p)]


# ---- code given to interpreters ----------------------------------------------------------------------------
_CODE_RULES: tuple[tuple[str, str], ...] = (
    ("deletes files", r"rmtree|\bunlink|\brmdir|\bremove\s*\(|os\.remove|\brm_r|FileUtils\.rm|File\.delete|"
                      r"fs\.(?:rm|unlink|rmdir)|rimraf|\brm\s+-|Dir\.delete|\btruncate\b|shred"),
    ("starts processes", r"\bsystem\s*\(|\bsystem\b\s*['\"]|popen|subprocess|\bspawn|\bexec[lvpe]*\s*\(|"
                         r"os\.exec|\bexec\w*Sync|\bexecFile|\bpty\b|\bfork\b|`|\bqx\s*[({/|'\"]|%x[({\[]|"
                         r"child_process|Open3|shell_exec|passthru|proc_open|Runtime\.getRuntime|ProcessBuilder|"
                         r"Command::new|startfile|open\s*\(.*['\"]\s*-?\|"),
    ("runs hidden or generated code", r"\beval\s*\(|\beval\b\s*['\"$]|\bexec\s*\(|\bcompile\s*\(|__import__|"
                                      r"importlib|getattr\s*\(|b64decode|base64|codecs|fromhex|\\x[0-9a-fA-F]{2}|"
                                      r"\\[0-7]{3}|\bchr\s*\(|marshal|pickle\.loads|ctypes|\bpack\s*\(|ioctl|"
                                      r"TIOCSTI|\bFunction\s*\(|new\s+Function"),
    ("writes into system files", r"['\"]/(?:etc|boot|sys|usr|bin|sbin|lib)\b|['\"]/dev/(?:sd|hd|vd|xvd|nvme|mmcblk)|"
                                 r"/proc/sysrq"),
)


def judge_code(code: str, language: str) -> Finding | None:
    """Interpreter code (``python -c``, ``perl -e``, a REPL line) that deletes, spawns or hides what it does."""
    if UNKNOWN in code:
        return Finding("confirm", f"{language} code computed at run time",
                       f"{language} runs code that is only known at run time")
    for what, pattern in _CODE_RULES:
        if re.search(pattern, code):
            return Finding("confirm", f"{language} code that {what}", f"{language} code that {what}")
    return None


# ---- program tables ----------------------------------------------------------------------------------------
SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "fish", "csh", "tcsh", "yash", "posh", "rbash", "ksh93"}
INTERPRETERS = {"python": "python", "python2": "python", "python3": "python", "pypy": "python", "pypy3": "python",
                "ipython": "python", "ipython3": "python", "perl": "perl", "ruby": "ruby", "irb": "ruby",
                "node": "node", "nodejs": "node", "deno": "node", "bun": "node", "php": "php", "lua": "lua",
                "luajit": "lua", "tclsh": "tcl", "wish": "tcl", "Rscript": "r", "R": "r", "julia": "julia",
                "pwsh": "powershell", "powershell": "powershell", "osascript": "applescript", "guile": "scheme",
                "racket": "scheme", "sbcl": "lisp", "clisp": "lisp", "gawk": "awk", "groovy": "groovy",
                "jshell": "java", "scala": "scala", "erl": "erlang", "elixir": "elixir", "iex": "elixir",
                "ghci": "haskell", "runghc": "haskell", "crystal": "crystal", "swift": "swift", "qjs": "node"}
_CODE_FLAGS = {"python": {"c"}, "perl": {"e", "E"}, "ruby": {"e"}, "node": {"e", "p"}, "php": {"r"}, "lua": {"e"},
               "tcl": set(), "r": {"e"}, "julia": {"e"}, "powershell": {"c"}, "applescript": {"e"},
               "scheme": {"e", "c"}, "lisp": set(), "groovy": {"e"}, "erlang": set(), "elixir": {"e"}}
_CODE_LONG = {"--eval", "--print", "--command", "-Command", "--execute", "-command", "--expr"}
DOWNLOADERS = {"curl", "wget", "fetch", "aria2c", "axel", "http", "https", "xh", "lwp-download", "lwp-request",
               "GET", "lynx", "links", "w3m", "nc", "ncat", "netcat", "socat", "ftp", "tftp", "scp", "sftp",
               "rsync", "git", "svn", "httpie", "wget2", "curlie"}
DECODERS = {"base64", "base32", "basenc", "xxd", "uudecode", "openssl", "gunzip", "zcat", "gzip", "bzip2", "bunzip2",
            "xz", "unxz", "zstd", "unzstd", "lzma", "rev", "tr", "od", "printf", "echo", "python", "python3", "perl",
            "awk", "sed", "tac", "iconv", "recode", "gpg"}
PRIVILEGE = {"sudo", "su", "doas", "pkexec", "runuser", "sudoedit", "gksu", "gksudo", "kdesu", "kdesudo",
             "machinectl", "systemd-run", "run0", "calife", "super", "please"}
POWER = {"shutdown", "reboot", "poweroff", "halt", "telinit", "init", "kexec", "rtcwake", "xfce4-session-logout",
         "gnome-session-quit", "lxsession-logout", "lxqt-leave", "mate-session-save", "qdbus-qt5"}
_SYSTEMCTL_POWER = {"poweroff", "reboot", "halt", "kexec", "suspend", "hibernate", "hybrid-sleep",
                    "suspend-then-hibernate", "soft-reboot", "rescue", "emergency", "isolate", "default", "exit",
                    "switch-root", "stop", "kill", "mask", "disable", "daemon-reexec"}
_LOGINCTL_POWER = {"poweroff", "reboot", "halt", "suspend", "hibernate", "hybrid-sleep", "terminate-session",
                   "terminate-user", "kill-session", "kill-user", "kill-seat", "terminate-seat"}
WIPERS = {"shred", "wipe", "srm", "wipefs", "mkswap", "mkdosfs", "mkntfs", "mke2fs", "fdisk", "sfdisk", "cfdisk",
          "gdisk", "sgdisk", "parted", "blkdiscard", "zerofree", "badblocks", "cryptsetup", "mdadm", "lvremove",
          "vgremove", "pvremove", "hdparm", "nvme", "sg_format", "dmsetup", "zpool", "losetup"}
INJECTORS = {"xdotool", "xte", "ydotool", "wtype", "xvkbd", "dotool"}
_WRITERS_LAST = {"mv", "cp", "ln", "install", "rsync", "scp", "link"}  # destination is the last operand
_WRITERS_ALL = {"tee", "touch", "mkdir", "truncate", "fallocate", "mkfifo", "mknod", "ex", "patch"}
_MASS_KILL_NAMES = re.compile(r"^(?:x|xorg|xvfb|xwayland|x11|openbox|gnome-session|gnome-shell|xfce4-session|"
                              r"lxsession|kwin.*|plasmashell|systemd.*|init|sshd|dbus.*|bash|sh|zsh|python.?|"
                              r"xterm|.{0,2}|\.\*?|\^.*)$", re.I)

# Wrappers: options that take a value, and how many operands come before the wrapped command.
_WRAPPERS: dict[str, tuple[set[str], int]] = {
    "env": ({"-u", "--unset", "-C", "--chdir", "-S", "--split-string"}, 0),
    "nohup": (set(), 0), "time": ({"-f", "--format", "-o", "--output"}, 0),
    "nice": ({"-n", "--adjustment"}, 0), "ionice": ({"-c", "-n", "-p", "-P", "-u", "--class", "--classdata"}, 0),
    "stdbuf": ({"-i", "-o", "-e", "--input", "--output", "--error"}, 0), "setsid": (set(), 0),
    "command": (set(), 0), "builtin": (set(), 0), "exec": ({"-a"}, 0), "unbuffer": (set(), 0),
    "catchsegv": (set(), 0), "valgrind": (set(), 0), "eatmydata": (set(), 0), "torsocks": (set(), 0),
    "strace": ({"-o", "-e", "-p", "-s", "-u", "-E", "-a", "-b", "-I", "-O", "-P", "-S", "-X"}, 0),
    "ltrace": ({"-o", "-e", "-p", "-s", "-u", "-n", "-a", "-A", "-D", "-l"}, 0),
    "xvfb-run": ({"-n", "--server-num", "-s", "--server-args", "-e", "--error-file", "-f", "--auth-file", "-p",
                  "--xauth-protocol"}, 0),
    "dbus-run-session": ({"--config-file", "--dbus-daemon"}, 0), "dbus-launch": (set(), 0),
    "fakeroot": ({"-l", "--lib", "--faked", "-s", "-i"}, 0), "firejail": (set(), 0), "proot": ({"-r", "-b", "-w"}, 0),
    "sshpass": ({"-p", "-f", "-d"}, 0), "proxychains": ({"-f"}, 0), "proxychains4": ({"-f"}, 0),
    "timeout": ({"-s", "--signal", "-k", "--kill-after"}, 1), "chrt": (set(), 1), "taskset": (set(), 1),
    "flock": ({"-w", "--timeout", "-E", "--conflict-exit-code"}, 1), "chroot": ({"--userspec", "--groups"}, 1),
    "nsenter": ({"-t", "--target", "-S", "--setuid", "-G", "--setgid"}, 0), "unshare": (set(), 0),
    "busybox": (set(), 0), "toybox": (set(), 0), "caffeinate": (set(), 0), "chronic": (set(), 0),
    "sudo": ({"-u", "-g", "-h", "-p", "-C", "-D", "-r", "-t", "-U", "-T", "--user", "--group", "--host", "--prompt",
              "--chdir", "--close-from", "--role", "--type", "--other-user", "--command-timeout"}, 0),
    "doas": ({"-u", "-C"}, 0), "pkexec": ({"--user"}, 0), "run0": ({"-u", "--user"}, 0),
    "runuser": ({"-u", "-g", "-G", "-s", "--user", "--group", "--shell"}, 0),
    "systemd-run": ({"-p", "--property", "-u", "--unit", "-M", "--machine", "--uid", "--gid", "--nice",
                     "-E", "--setenv", "--working-directory", "--description", "--slice"}, 0),
    "gksu": ({"-u", "--user"}, 0), "gksudo": ({"-u", "--user"}, 0), "kdesu": ({"-u"}, 0), "kdesudo": ({"-u"}, 0),
    "parallel": ({"-j", "--jobs", "-S", "--sshlogin", "--delay", "--timeout"}, 0),
    "xargs": ({"-a", "--arg-file", "-d", "--delimiter", "-E", "-e", "-I", "-i", "-L", "-l", "-n", "--max-args",
               "-P", "--max-procs", "-s", "--max-chars", "--replace", "--max-lines", "--eof",
               "--process-slot-var"}, 0),
}
_SUFFIX_SCAN = {"env", "time", "nice", "ionice", "stdbuf", "timeout", "chrt", "taskset", "flock", "sudo", "doas",
                "pkexec", "runuser", "nohup", "setsid", "xargs", "strace", "ltrace", "xvfb-run", "unbuffer",
                "chroot", "parallel", "nsenter", "unshare", "systemd-run", "fakeroot", "firejail", "proot",
                "sshpass", "exec", "command", "builtin", "torsocks", "proxychains", "proxychains4", "eatmydata",
                "valgrind", "catchsegv", "dbus-run-session", "dbus-launch", "gksu", "gksudo", "kdesu", "kdesudo",
                "run0", "caffeinate", "chronic"}


def _RISKY_NAMES() -> set[str]:
    names = set(SHELLS) | set(INTERPRETERS) | PRIVILEGE | POWER | WIPERS | INJECTORS | set(_WRAPPERS)
    names |= {n[2:].replace("_", "-") for n in dir(ProgramRules) if n.startswith("p_")}
    return names | {"rm", "mkfs", "dd", "find", "chmod", "chown", "kill", "pkill", "killall", "eval", "source",
                    "exec", "curl", "wget", "mv", "cp", "tee", "truncate"}


def _name(word: Word) -> str:
    return posixpath.basename(word.text) if word.text not in ("", "/") else word.text


def _interp(name: str) -> str | None:
    if name in INTERPRETERS:
        return INTERPRETERS[name]
    m = re.fullmatch(r"(python|pypy|perl|ruby|node|php|lua)[0-9.]*m?", name)
    return INTERPRETERS.get(m.group(1), m.group(1)) if m else None


@dataclass
class _Stdin:
    """Where a command's standard input comes from."""

    kind: Literal["terminal", "pipe", "heredoc", "herestring", "file"] = "terminal"
    text: str | None = None  # known text (here-documents, literal echo/printf)
    producer: str = ""  # the program writing into the pipe
    path: str | None = None


class ProgramRules:
    """The per-program rules, mixed into the shell judge (``flag``, ``sub``, ``run``, ``state`` come from it)."""

    state: "ShellState"

    def write_target(self, target: str, verb: str) -> None:
        kind = path_class(target)
        if kind == "unknown":
            self.flag("confirm", "write to a computed path", f"{verb} a file whose name is only known at run time")
        elif kind in ("root", "system", "device", "home", "startup"):
            what = {"root": "the root folder", "system": "a system folder", "device": "a device (disk)",
                    "home": "the home folder", "startup": "a login or SSH start-up file"}[kind]
            self.flag("confirm", f"write into {what}", f"{verb} {target} ({what})")

    def note_file(self, target: str, fields: list[Word], producer: str, stdin: _Stdin | None = None) -> None:
        if UNKNOWN in target:
            return
        text: str | None = None
        source = "written by a command"
        if producer == "cat" and len(fields) == 1 and stdin is not None and stdin.text is not None:
            text = stdin.text
        if producer in ("echo", "printf") and all(f.known for f in fields[1:]) and not any(
                "\\" in f.text or "%" in f.text for f in fields[1:]):
            text = " ".join(f.text for f in fields[1:] if f.text not in ("-n", "-e")) + "\n"
        elif producer in DOWNLOADERS:
            source = "downloaded"
        elif producer in DECODERS:
            source = "decoded"
        self.remember(target, FileNote(text, source))

    def remember(self, path: str, note: FileNote) -> None:
        for key in _file_key(path):
            self.state.files[key] = note

    # -- running a program
    def wrapper(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        if name in PRIVILEGE or name in ("chroot", "nsenter"):
            self.flag("confirm", "runs as root", f"{name} runs a command as root or another user")
        value_options, operands = _WRAPPERS[name]
        rest = list(args)
        extra = name in ("xargs", "parallel")
        i = 0
        while i < len(rest):
            text = rest[i].text
            if not rest[i].known and name != "env":
                self.flag("confirm", "computed program name", f"{name} runs a command only known at run time")
                return
            if text == "--":
                i += 1
                break
            if name == "env" and re.match(r"[A-Za-z_][A-Za-z0-9_]*=", text):
                key, _, value = text.partition("=")
                self._special_variable(key, value if UNKNOWN not in value else None)
                i += 1
                continue
            if name == "env" and (text in ("-S", "--split-string") or text.startswith(("-S", "--split-string="))):
                split = rest[i + 1].text if text in ("-S", "--split-string") and i + 1 < len(rest) else \
                    text.split("=", 1)[-1] if "=" in text else text[2:]
                self.sub(split, "env -S")
                return
            if text.startswith("-") and len(text) > 1:
                if text in value_options or (text.startswith("--") and "=" not in text and text in value_options):
                    i += 2
                elif len(text) > 2 and not text.startswith("--") and text[:2] in value_options:
                    i += 1
                else:
                    i += 1
                continue
            if name == "nice" and re.fullmatch(r"-\d+", text):
                i += 1
                continue
            break
        if name in ("chrt", "taskset") and i < len(rest) and rest[i].text.startswith("-"):
            pass
        i += operands
        if name == "flock" and i < len(rest) and rest[i].text in ("-c", "--command"):
            if i + 1 < len(rest):
                self.sub(rest[i + 1].text, "flock -c")
            return
        if name == "parallel":
            rest = [w for w in rest if w.text not in (":::", "::::")]
        if name in ("busybox", "toybox") and i >= len(rest):
            return
        command = rest[i:]
        if name in ("command",) and args and args[0].text in ("-v", "-V"):
            return
        if command:
            self.run(command, stdin, extra_unknown=extra)
        # Options the tables do not know could shift where the command starts: judge every later start too.
        if name in _SUFFIX_SCAN:
            for j in range(len(args)):
                if j != i and args[j].known and not args[j].text.startswith("-") and "=" not in args[j].text:
                    inner = type(self)(self.state, self.depth + 1)
                    inner.local = dict(self.local)
                    inner.src = getattr(self, "src", "")
                    inner.run(args[j:], stdin, extra_unknown=extra)
                    self.findings.extend(f for f in inner.findings if f.rule not in (
                        "computed program name", "program name is a pattern"))

    # -- shells and interpreters
    def shell(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        i = 0
        while i < len(args):
            text = args[i].text
            if not args[i].known:
                self.flag("confirm", "shell with computed arguments", f"{name} runs code only known at run time")
                return
            if text in ("--rcfile", "--init-file", "-o", "+o", "-O", "+O"):
                if text in ("--rcfile", "--init-file") and i + 1 < len(args):
                    self.run_file(args[i + 1].text, "shell")
                i += 2
                continue
            if text == "--":
                i += 1
                break
            if text.startswith("-") and len(text) > 1 and not text.startswith("--") and "c" in text[1:]:
                if i + 1 < len(args):
                    self.sub(args[i + 1].text, f"{name} -c")
                else:
                    self.flag("confirm", "shell without code", f"{name} -c without a command")
                return
            if text.startswith(("-", "+")) and len(text) > 1:
                if text.startswith("-") and "s" in text[1:] and not text.startswith("--"):
                    break
                i += 1
                continue
            break
        script = args[i] if i < len(args) and args[i].text != "-" else None
        if script is not None:
            self.run_file(script.text, "shell")
            return
        self.stdin_code(name, "shell", stdin)

    def interpreter(self, name: str, language: str, args: list[Word], stdin: _Stdin) -> None:
        flags = _CODE_FLAGS.get(language, set())
        i = 0
        while i < len(args):
            text = args[i].text
            if not args[i].known:
                self.flag("confirm", f"{name} with computed arguments", f"{name} runs code only known at run time")
                return
            if text == "--":
                i += 1
                break
            if text in _CODE_LONG or (re.fullmatch(r"-[A-Za-z]+", text) and text[-1] in flags):
                code = args[i + 1].text if i + 1 < len(args) else ""
                found = judge_code(code, name)
                if found:
                    self.findings.append(found)
                if language == "perl" and re.search(r"-\w*i", " ".join(a.text for a in args)):
                    for target in args[i + 2:]:
                        self.write_target(target.text, f"{name} -i edits")
                return
            if language == "python" and text.startswith("-m"):
                return
            if text.startswith("-") and len(text) > 1:
                takes_value = (language == "python" and text in ("-W", "-X")) or (
                    language in ("node", "ruby") and text in ("-r", "--require", "--import"))
                i += 2 if takes_value else 1
                continue
            break
        script = args[i] if i < len(args) and args[i].text != "-" else None
        if script is not None:
            self.run_file(script.text, language)
            return
        self.stdin_code(name, language, stdin)

    def stdin_code(self, name: str, language: str, stdin: _Stdin) -> None:
        """A shell or interpreter reading its program from standard input."""
        if stdin.kind == "terminal":
            if language != "shell" and name not in ("awk", "gawk", "sed"):
                if language not in self.state.repls:
                    self.state.repls.append(language)
            return
        if stdin.kind == "file":
            self.run_file(stdin.path or UNKNOWN, language)
            return
        if stdin.text is not None:
            if language == "shell":
                self.sub(stdin.text, f"input of {name}")
            else:
                found = judge_code(stdin.text, name)
                if found:
                    self.findings.append(found)
            return
        producer = stdin.producer
        if producer in DOWNLOADERS:
            self.flag("confirm", "download piped into a shell", f"runs code downloaded by {producer} with {name}")
        elif producer in DECODERS:
            self.flag("confirm", "decoder piped into a shell", f"runs code decoded by {producer} with {name}")
        else:
            self.flag("confirm", "text piped into a shell", f"{name} runs whatever {producer or 'a command'} prints")

    # -- programs judged by their arguments (p_<name>)
    def p_rm(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        flags, operands, computed = _options(args)
        if computed:
            self.flag("confirm", "rm with computed arguments", "rm with arguments only known at run time")
        if flags & {"r", "R", "recursive", "f", "force", "no-preserve-root"}:
            self.flag("confirm", "recursive or forced deletion",
                      "rm " + " ".join(str(a) for a in args)[:60] + " deletes recursively or by force")
        for word in operands:
            kind = path_class(word.text)
            if kind in ("root", "home", "system", "device", "startup"):
                self.flag("confirm", "deletes a root, home or system path", f"rm of {word} ({kind})")
            elif word.glob:
                self.flag("confirm", "rm with a wildcard", f"rm {word} deletes every matching file")

    p_unlink = None  # one file, no recursion

    def p_find(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        texts = [a.text for a in args]
        if "-delete" in texts:
            self.flag("confirm", "find -delete", "find -delete deletes every match")
        for i, text in enumerate(texts):
            if text in ("-exec", "-execdir", "-ok", "-okdir"):
                end = next((j for j in range(i + 1, len(texts)) if texts[j] in (";", "+", "\\;")), len(texts))
                command = [Word(UNKNOWN) if a.text == "{}" else a for a in args[i + 1:end]]
                if command and command[0].known and _name(command[0]) in ("rm", "shred", "unlink", "rmdir"):
                    self.flag("confirm", "find -exec rm", "find runs rm on every match")
                if command:
                    self.run(command, _Stdin())
            elif text in ("-fprint", "-fprint0", "-fprintf", "-fls") and i + 1 < len(texts):
                self.write_target(texts[i + 1], "find writes into")
        for word in args[:1]:
            if path_class(word.text) in ("root", "system") and "-delete" in texts:
                self.flag("confirm", "find -delete", f"find -delete under {word}")

    def p_dd(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        for word in args:
            if word.text.startswith("of="):
                target = word.text[3:]
                if path_class(target) in ("device", "system", "root", "unknown", "startup"):
                    self.flag("confirm", "dd to a device", f"dd writes raw blocks to {target}")

    def p_chmod(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        flags, operands, computed = _options(args, numeric_ok=True)
        recursive = bool(flags & {"R", "recursive"})
        mode = operands[0].text if operands and name == "chmod" else ""
        if name == "chmod" and re.search(r"(^|[,ugoa])[ugoa]*[+=][rwxXt]*s|^[0-7]?[4-7][0-7]{3}$", mode):
            self.flag("confirm", "setuid bit", f"chmod {mode} lets a program run as its owner (root)")
        targets = operands[1:] if name in ("chmod", "chown", "chgrp") else operands
        for word in targets:
            kind = path_class(word.text)
            if kind in ("root", "system", "device", "startup") or (recursive and kind in ("home", "unknown")):
                self.flag("confirm", f"{'recursive ' if recursive else ''}{name} on a system path",
                          f"{name} {'-R ' if recursive else ''}on {word} ({kind})")

    p_chown = p_chgrp = p_setfacl = p_chattr = p_chmod

    def p_systemctl(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        verbs = [a.text for a in args if not a.text.startswith("-")]
        if any(not a.known for a in args):
            self.flag("confirm", "systemctl with computed arguments", "systemctl with arguments known at run time")
        if verbs and (verbs[0] in _SYSTEMCTL_POWER or (verbs[0] == "start" and any(
                v.endswith(("poweroff.target", "reboot.target", "halt.target", "rescue.target")) for v in verbs))):
            self.flag("confirm", "systemctl power or service change", f"systemctl {verbs[0]} stops the machine or "
                      "its services")

    def p_loginctl(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        verbs = [a.text for a in args if not a.text.startswith("-")]
        if verbs and verbs[0] in _LOGINCTL_POWER:
            self.flag("confirm", "loginctl power or session", f"loginctl {verbs[0]} ends the session or powers off")

    def p_dbus_send(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        if re.search(r"PowerOff|Reboot|Halt|Suspend|Hibernate|Logout|Terminate", " ".join(a.text for a in args)):
            self.flag("confirm", "power over D-Bus", f"{name} asks the system to power off or end the session")

    p_gdbus = p_busctl = p_qdbus = p_dbus_send

    def p_kill(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        if any(not a.known for a in args):
            self.flag("confirm", "kill of computed processes", "kill of processes only known at run time")
        targets = [a.text for a in args[1:]] + [a.text for a in args[:1] if not a.text.startswith("-")]
        if any(t in ("-1", "0", "1") or re.fullmatch(r"-\d+", t) for t in targets):
            self.flag("confirm", "mass kill", "kill of every process (-1), init (1) or a process group")

    def p_pkill(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        texts = [a.text for a in args]
        broad = any(re.match(r"-[uUgGstP]|--(uid|euid|session|parent|pgroup|group|terminal)", t) for t in texts)
        names = [t for t in texts if not t.startswith("-")]
        computed = any(not a.known for a in args)
        if name == "killall5" or broad or computed or not names or any(_MASS_KILL_NAMES.match(n) for n in names):
            self.flag("confirm", "mass kill", f"{name} {' '.join(texts)[:40]} kills many or vital processes")

    p_killall = p_killall5 = p_pgrep_kill = p_pkill

    def p_xkill(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        if any(a.text in ("-all", "-a") for a in args):
            self.flag("confirm", "mass kill", "xkill -all kills every X client")

    def p_eval(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        self.sub(" ".join(a.text for a in args), "eval")

    def p_source(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        if not args:
            return
        if not args[0].known:
            self.flag("confirm", "source of computed code", f"{name} runs code from a command's output")
        elif args[0].text in ("/dev/stdin", "-", "/proc/self/fd/0"):
            self.stdin_code(name, "shell", stdin)
        else:
            self.run_file(args[0].text, "shell")

    p__ = p_source  # "."

    def p_exec(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        self.wrapper(name, args, stdin)

    def p_alias(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        for word in args:
            key, eq, value = word.text.partition("=")
            if eq:
                self.sub(value, f"the alias {key}")
                self.state.aliases[key] = None if UNKNOWN in value else value

    def p_unalias(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        for word in args:
            self.state.aliases.pop(word.text, None)

    def p_export(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        for word in args:
            if word.text.startswith("-"):
                if "f" in word.text:
                    return
                continue
            key, eq, value = word.text.partition("=")
            if eq and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                self.set_variable(key, None if UNKNOWN in value else value)

    p_declare = p_typeset = p_local = p_readonly = p_export

    def p_unset(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        for word in args:
            self.state.variables.pop(word.text, None)
            self.local.pop(word.text, None)

    def p_read(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        for word in args:
            if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", word.text):
                self.set_variable(word.text, None)

    p_mapfile = p_readarray = p_read

    def p_trap(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        if args and not args[0].text.startswith("-") and len(args) > 1:
            self.sub(args[0].text, "trap")

    def p_enable(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        if any(a.text.startswith("-f") for a in args):
            self.flag("confirm", "loads a shell builtin", "enable -f loads compiled code into the shell")

    def p_bind(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        if any(a.text.startswith("-x") for a in args):
            self.flag("confirm", "key bound to a command", "bind -x runs a command on a key press")

    def p_fc(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        if not any(a.text.startswith("-l") for a in args):
            self.flag("confirm", "re-runs history", "fc runs earlier commands again")

    p_r = p_fc

    def p_watch(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        rest = list(args)
        while rest and rest[0].text.startswith("-"):
            rest = rest[2:] if rest[0].text in ("-n", "--interval", "-q", "--equexit") else rest[1:]
        if rest:
            self.sub(" ".join(w.text for w in rest), "watch")

    def p_script(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        for i, word in enumerate(args):
            if word.text in ("-c", "--command") and i + 1 < len(args):
                self.sub(args[i + 1].text, "script -c")

    def p_su(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        self.flag("confirm", "runs as root", f"{name} runs a command as root or another user")
        for i, word in enumerate(args):
            if word.text in ("-c", "--command") and i + 1 < len(args):
                self.sub(args[i + 1].text, f"{name} -c")

    p_sg = p_su

    def p_ssh(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        value_opts = set("bcDEeFIiJLlmOoPpQRSWw")
        i = 0
        while i < len(args):
            text = args[i].text
            if text.startswith("-") and len(text) > 1:
                if "ProxyCommand" in text or "LocalCommand" in text or (
                        i + 1 < len(args) and re.match(r"(ProxyCommand|LocalCommand|PermitLocalCommand)",
                                                       args[i + 1].text)):
                    self.flag("confirm", "ssh runs a local command", "ssh ProxyCommand/LocalCommand runs a command")
                i += 2 if text[-1] in value_opts and len(text) == 2 else 1
                continue
            break
        remote = args[i + 1:]
        if remote:
            self.sub(" ".join(w.text for w in remote), "ssh (remote)")

    def p_git(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        texts = [a.text for a in args]
        for i, text in enumerate(texts):
            if text == "-c" and i + 1 < len(texts) and re.search(
                    r"!|sshcommand|pager|editor|hookspath|fsmonitor|askpass|helper|textconv|\.cmd|proxy",
                    texts[i + 1], re.I):
                self.flag("confirm", "git config runs a command", f"git -c {texts[i + 1][:40]} runs a command")
        verbs = [t for t in texts if not t.startswith("-")]
        verb = verbs[0] if verbs else ""
        if verb == "clean" and any(re.fullmatch(r"-\w*f\w*|--force", t) for t in texts):
            self.flag("confirm", "git clean", "git clean -f deletes untracked files")
        elif verb == "reset" and "--hard" in texts:
            self.flag("confirm", "git reset --hard", "git reset --hard discards uncommitted changes")
        elif verb == "push" and any(t in ("-f", "--force", "--mirror", "--delete", "-d") or
                                    t.startswith("--force") or t.startswith("+") for t in texts):
            self.flag("confirm", "git push --force", "git push rewrites or deletes history on the remote")
        elif verb in ("checkout", "restore") and "." in texts:
            self.flag("confirm", "git discards changes", f"git {verb} . discards uncommitted changes")

    def p_crontab(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        texts = [a.text for a in args]
        if "-l" not in texts:
            self.flag("confirm", "crontab change", "crontab -r deletes, crontab FILE installs scheduled commands")

    def p_at(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        if not any(a.text in ("-l", "-c") for a in args):
            self.flag("confirm", "schedules commands", f"{name} schedules commands to run later")

    p_batch = p_at

    def p_tmux(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        if any(a.text in ("send-keys", "send", "stuff", "-X") for a in args):
            self.flag("confirm", "synthetic keystrokes", f"{name} types keystrokes into another terminal")

    p_screen = p_tmux

    def p_awk(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        program = next((a.text for a in args if not a.text.startswith("-")), "")
        if any(not a.known for a in args[:1]) or re.search(r"\bsystem\s*\(|\|\s*&?\s*\"|\"\s*\|\s*getline|\|&",
                                                            program):
            self.flag("confirm", f"{name} runs commands", f"{name} program that runs shell commands")
        for i, a in enumerate(args):
            if a.text == "-f" and i + 1 < len(args):
                self.run_file(args[i + 1].text, "awk")

    p_gawk = p_mawk = p_nawk = p_busybox_awk = p_awk

    def p_sed(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        texts = [a.text for a in args]
        in_place = any(re.fullmatch(r"-\w*i\w*|--in-place(=.*)?", t) for t in texts)
        scripts = [texts[i + 1] for i, t in enumerate(texts) if t in ("-e", "--expression") and i + 1 < len(texts)]
        operands = [t for t in texts if not t.startswith("-")]
        if not scripts and operands:
            scripts, operands = operands[:1], operands[1:]
        for script in scripts:
            if re.search(r"(?:^|[;{}\n]|\d|\$|/)\s*e(?:\s|;|$)|s(.).*\1.*\1[gpiImM0-9]*e|(?:^|[;{}\s])w\s*/", script):
                self.flag("confirm", "sed runs commands or writes files", "sed script with e or w commands")
        if in_place:
            for target in operands:
                self.write_target(target, "sed -i edits")

    def p_perl(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        self.interpreter(name, "perl", args, stdin)

    def p_rsync(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        texts = [a.text for a in args]
        if any(t.startswith(("--delete", "--remove-source-files")) for t in texts):
            self.flag("confirm", "rsync deletes", "rsync --delete removes files at the destination")
        if any(t in ("-e", "--rsh") or t.startswith("--rsh=") for t in texts):
            self.flag("confirm", "rsync runs a command", "rsync -e runs a command")
        self.writer(name, args)

    def p_tar(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        texts = " ".join(a.text for a in args)
        if re.search(r"--to-command|--checkpoint-action|--use-compress-program|-I\s|--info-script|--new-volume-script",
                     texts):
            self.flag("confirm", "tar runs a command", "tar option that runs a command")
        if "--remove-files" in texts:
            self.flag("confirm", "tar deletes", "tar --remove-files deletes the originals")
        for i, a in enumerate(args):
            if a.text in ("-C", "--directory") and i + 1 < len(args):
                self.write_target(args[i + 1].text, "tar extracts into")

    def p_mount(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        if args:
            self.flag("confirm", "changes mounts", f"{name} changes mounted file systems")

    p_umount = p_swapoff = p_swapon = p_mount

    def p_apt(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        texts = [a.text for a in args]
        if any(t in ("remove", "purge", "autoremove", "erase", "-r", "-P", "--purge", "--remove", "-R", "-Rs",
                     "-Rns", "uninstall") for t in texts):
            self.flag("confirm", "uninstalls packages", f"{name} removes installed software")

    p_apt_get = p_aptitude = p_dpkg = p_yum = p_dnf = p_pacman = p_snap = p_zypper = p_apk = p_apt

    def p_iptables(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        self.flag("confirm", "changes the firewall", f"{name} changes the firewall")

    p_ip6tables = p_nft = p_iptables

    def p_ufw(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        if any(a.text in ("disable", "reset", "deny", "reject") for a in args):
            self.flag("confirm", "changes the firewall", f"{name} changes the firewall")

    def p_ip(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        texts = [a.text for a in args]
        if "down" in texts or "del" in texts or "flush" in texts:
            self.flag("confirm", "takes the network down", "ip ... down/del/flush cuts the network")

    p_ifconfig = p_ifdown = p_ip

    def p_nmcli(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        texts = [a.text for a in args]
        if "off" in texts or "down" in texts or "delete" in texts:
            self.flag("confirm", "takes the network down", "nmcli ... off/down/delete cuts the network")

    def p_useradd(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        self.flag("confirm", "changes user accounts", f"{name} changes user accounts or passwords")

    p_userdel = p_usermod = p_passwd = p_chpasswd = p_groupdel = p_visudo = p_adduser = p_deluser = p_useradd
    p_chsh = p_groupmod = p_vipw = p_useradd

    def p_insmod(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        self.flag("confirm", "changes the kernel", f"{name} changes the running kernel")

    p_rmmod = p_sysctl = p_kexec = p_insmod

    def p_modprobe(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        self.flag("confirm", "changes the kernel", f"{name} changes the running kernel")

    def p_curl(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        texts = [a.text for a in args]
        url = next((t for t in texts if re.match(r"\w+://", t)), "")
        for i, text in enumerate(texts):
            if text in ("-o", "--output", "-O" if name == "wget" else "\0", "--output-document") and i + 1 < len(texts):
                self.write_target(texts[i + 1], f"{name} writes into")
                self.remember(texts[i + 1], FileNote(None, "downloaded"))
            elif re.match(r"-\w*o$", text) and name == "curl" and i + 1 < len(texts):
                self.write_target(texts[i + 1], f"{name} writes into")
                self.remember(texts[i + 1], FileNote(None, "downloaded"))
            elif (text in ("-O", "--remote-name") or re.match(r"-\w*O$", text)) and name == "curl" or (
                    name == "wget" and text not in ("-O",) and re.match(r"\w+://", text)):
                base = posixpath.basename(url.split("?")[0]) or "index.html"
                self.remember(base, FileNote(None, "downloaded"))
            elif text.startswith("--output-document="):
                self.remember(text.split("=", 1)[1], FileNote(None, "downloaded"))
        if name == "wget" and url and not any(t in ("-O", "--output-document") or t.startswith("-O")
                                              for t in texts):
            self.remember(posixpath.basename(url.split("?")[0]) or "index.html", FileNote(None, "downloaded"))

    p_wget = p_aria2c = p_curl

    def p_base64(self, name: str, args: list[Word], stdin: _Stdin) -> None:
        pass

    # -- file writers
    def writer(self, name: str, args: list[Word]) -> None:
        flags, operands, computed = _options(args)
        if not operands:
            return
        if name in _WRITERS_LAST:
            target_dir = next((args[i + 1].text for i, a in enumerate(args) if a.text in ("-t", "--target-directory")
                               and i + 1 < len(args)), None)
            targets = [target_dir] if target_dir else [operands[-1].text]
            if name == "mv":
                for source in (operands if target_dir else operands[:-1]):
                    if path_class(source.text) in ("root", "home", "system", "device", "startup"):
                        self.flag("confirm", "moves a system or home folder", f"mv {source} moves it away")
            for source in (operands if target_dir else operands[:-1]):
                for key in _file_key(source.text):
                    if key in self.state.files:
                        for target in targets:
                            self.remember(target, self.state.files[key])
                        break
        else:
            targets = [o.text for o in operands]
        for target in targets:
            self.write_target(target, f"{name} writes into")


def _options(args: list[Word], numeric_ok: bool = False) -> tuple[set[str], list[Word], bool]:
    """(option letters and long names, operands, any argument computed) with GNU's option permutation."""
    flags: set[str] = set()
    operands: list[Word] = []
    computed = False
    done = False
    for word in args:
        if not word.known:
            computed = True
            operands.append(word)
            continue
        text = word.text
        if done or text == "-" or not text.startswith("-"):
            operands.append(word)
        elif text == "--":
            done = True
        elif text.startswith("--"):
            flags.add(text[2:].split("=", 1)[0])
        elif numeric_ok and re.fullmatch(r"-[0-9A-Z]+", text) and not re.fullmatch(r"-R", text):
            operands.append(word)
        else:
            flags.update(text[1:])
    return flags, operands, computed
