#!/usr/bin/python3
"""The man pages and the bash completion keep up with the programs.

    check_man.py APBUNDLEFS APBUNDLE APBUNDLEFS_8 APBUNDLE_1 COMPLETION
                 [PROGRAM MAN_PAGE]...

Runs `apbundlefs --help`, `apbundle --help` and `apbundle help COMMAND` for
every command listed, and fails when
  - an option they print (-x, --long, -o NAME) is not in the man page,
  - a command of apbundle has no section (.SS) in apbundle(1), or is not
    offered by the completion, or a --long option of a command is not,
  - an option of `PROGRAM --help` (the other tools) is not in its man page,
  - a man page lacks EXIT STATUS (and apbundlefs(8) .stats, .metrics or
    .control),
  - groff, if installed, warns about a man page (-ww).
"""
import re
import shutil
import subprocess
import sys
from pathlib import Path


def run_help(*argv):
    r = subprocess.run(list(argv), capture_output=True, text=True,
                       timeout=30)
    if r.returncode != 0:
        sys.exit(f'FAIL: {" ".join(argv)} exited {r.returncode}: '
                 f'{r.stderr.strip()}')
    return r.stdout


def man_text(path):
    """The roff source with escapes undone, enough to find option names."""
    t = Path(path).read_text()
    t = re.sub(r'\\f[BIRP]', '', t)
    t = t.replace('\\-', '-').replace('\\&', '').replace('\\e', '\\')
    return t


def flags(help_text):
    """-x and --long options, and the NAME of each -o NAME[=...]."""
    dashed = set(re.findall(r'(?<![\w-])(--?[A-Za-z][\w-]*)', help_text))
    named = set(n for n in re.findall(r'(?<![\w-])-o\s+([A-Za-z_]\w*)',
                                      help_text)
                if not n.isupper())  # not the synopsis's -o OPT
    return dashed, named


def src(path):
    """The file to edit: docs/man/X.in for a configured man page."""
    name = Path(path).name
    return name if name.endswith(('.in', '-completion')) else \
        f'docs/man/{name}.in'


def has_flag(text, flag):
    return re.search(r'(?<![\w-])' + re.escape(flag) + r'(?![\w-])',
                     text) is not None


def main():
    if len(sys.argv) < 6 or len(sys.argv) % 2 != 0:
        print(__doc__, file=sys.stderr)
        return 2
    fs_exe, cli_exe, fs_man, cli_man, completion = sys.argv[1:6]
    others = list(zip(sys.argv[6::2], sys.argv[7::2]))
    failures = []

    for exe, page in others:
        text = man_text(page)
        dashed, _ = flags(run_help(exe, '--help'))
        for f in sorted(dashed):
            if not has_flag(text, f):
                failures.append(f'{src(page)}: "{f}" of {Path(exe).name} '
                                '--help is not in the man page')
        if '.SH EXIT STATUS' not in text:
            failures.append(f'{src(page)}: no ".SH EXIT STATUS"')

    fs_help = run_help(fs_exe, '--help')
    text = man_text(fs_man)
    dashed, named = flags(fs_help)
    for f in sorted(dashed):
        if not has_flag(text, f):
            failures.append(f'{src(fs_man)}: "{f}" of apbundlefs '
                            '--help is not in the man page; describe it '
                            'there (OPTIONS)')
    for n in sorted(named):
        if not re.search(r'-o\s+"?' + re.escape(n) + r'(?![\w])', text):
            failures.append(f'{src(fs_man)}: "-o {n}" of apbundlefs '
                            '--help is not in the man page; add a .TP entry '
                            'for it under OPTIONS (docs/USAGE.md has the '
                            'words)')
    for needed in ('.SH EXIT STATUS', '.SS .stats', '.SS .metrics',
                   '.SS .control'):
        if needed not in text:
            failures.append(f'{src(fs_man)}: no "{needed}"')

    cli_help = run_help(cli_exe, '--help')
    text = man_text(cli_man)
    comp = Path(completion).read_text()
    m = re.search(r'^Commands:\n((?:  \S.*\n)+)', cli_help, re.M)
    if not m:
        failures.append('apbundle --help: no "Commands:" list to check')
        commands = []
    else:
        commands = [ln.split()[0] for ln in m.group(1).splitlines()]
    helps = [cli_help] + [run_help(cli_exe, 'help', c)
                          for c in commands if c != 'help']
    for c in commands:
        if f'.SS {c}\n' not in text:
            failures.append(f'{src(cli_man)}: command "{c}" has no '
                            f'".SS {c}" section')
        if not re.search(r'\b' + re.escape(c) + r'\b', comp):
            failures.append(f'{src(completion)}: command "{c}" is '
                            'not completed')
    for h in helps:
        dashed, _ = flags(h)
        for f in sorted(dashed):
            if not has_flag(text, f):
                failures.append(f'{src(cli_man)}: "{f}" of apbundle\'s '
                                'help is not in the man page')
            if f.startswith('--') and f != '--chunk-size' and \
                    not has_flag(comp, f):
                failures.append(f'{src(completion)}: "{f}" of '
                                'apbundle\'s help is not completed')
    if '.SH EXIT STATUS' not in text:
        failures.append(f'{src(cli_man)}: no ".SH EXIT STATUS"')

    if shutil.which('groff'):
        for page in [fs_man, cli_man] + [p for _, p in others]:
            r = subprocess.run(['groff', '-man', '-ww', '-z', '-Tutf8', page],
                               capture_output=True, text=True)
            if r.returncode != 0 or r.stderr.strip():
                failures.append(f'{src(page)}: groff warns: '
                                f'{r.stderr.strip()}')

    for f in failures:
        print('FAIL: ' + f)
    if failures:
        return 1
    print('ok: every option of apbundlefs --help, apbundle\'s help and '
          f'{len(others)} other program(s) is in the man pages; '
          f'{len(commands)} commands completed')
    return 0


if __name__ == '__main__':
    sys.exit(main())
