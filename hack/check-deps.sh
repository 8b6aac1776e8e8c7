#!/usr/bin/env bash
# Checks that every command and file the build, the guest build and the tests
# use (hack/needs.txt) is on this machine and comes from a Debian package that
# hack/install-deps.sh installs (hack/packages.txt), so a dependency someone
# installed by hand fails here, on the machine where it was installed by hand,
# and not on the next fresh one. Packages every Debian system has (Essential,
# or Priority required) need no packages.txt line. Every listed package must
# provide at least one need, so leaving any one out of the list fails too.
#
#   check-deps.sh              check this machine
#   check-deps.sh --self-test  show that dropping each listed package fails the check
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
packages_file=${PACKAGES_FILE:-$here/packages.txt}
needs_file=${NEEDS_FILE:-$here/needs.txt}

entries() { sed -e 's/#.*//' -e '/^[[:space:]]*$/d' -e 's/[[:space:]]//g' "$1"; }

# owner prints the package that ships path. Debian 12 merged /bin into /usr/bin,
# but dpkg still records many files under their old names, so try both spellings
# of the path and of its resolved target.
owner() {
  local p=$1 cand=() c
  for c in "$p" "$(readlink -f "$p")"; do
    cand+=("$c")
    case $c in
      /usr/bin/* | /usr/sbin/* | /usr/lib/*) cand+=("${c#/usr}") ;;
      /bin/* | /sbin/* | /lib/*) cand+=("/usr$c") ;;
    esac
  done
  for c in "${cand[@]}"; do
    local out
    if out=$(dpkg-query -S "$c" 2>/dev/null); then
      # "pkg1, pkg2: /path" or "pkg:arch: /path"; diversions print "diversion by".
      out=$(grep -v '^diversion' <<<"$out" | head -1)
      out=${out%%: *}
      out=${out%%,*}
      echo "${out%%:*}"
      return 0
    fi
  done
  return 1
}

base_package() {
  local f
  f=$(dpkg-query -W -f='${Essential} ${Priority}' "$1" 2>/dev/null) || return 1
  [[ $f == yes* || $f == *required ]]
}

# resolve finds each need on this machine and the package it comes from, once:
# dpkg-query is slow, and the self-test checks the same needs many times.
declare -A owner_of=() base=()
resolve_fail=0
resolve() {
  local need path pkg
  while read -r need; do
    if [[ $need == /* ]]; then
      path=$need
      [ -e "$path" ] || { echo "check-deps: $need is missing (run make deps)"; resolve_fail=1; continue; }
    else
      # type -P: a path even for a shell builtin (true, test), which command -v names bare.
      path=$(type -P "$need" 2>/dev/null) || { echo "check-deps: command $need is not on PATH (run make deps)"; resolve_fail=1; continue; }
    fi
    if ! pkg=$(owner "$path"); then
      echo "check-deps: $need ($path) belongs to no Debian package: it was installed by hand"
      resolve_fail=1
      continue
    fi
    owner_of[$need]=$pkg
    if [ -z "${base[$pkg]+x}" ]; then
      if base_package "$pkg"; then base[$pkg]=1; else base[$pkg]=""; fi
    fi
  done < <(entries "$needs_file")
}

# check compares the resolved needs with the packages listed in the file $1.
check() {
  local -A listed=() used=()
  local p need pkg fail=$resolve_fail
  while read -r p; do listed[$p]=1; done < <(entries "$1")
  for need in "${!owner_of[@]}"; do
    pkg=${owner_of[$need]}
    if [ -n "${listed[$pkg]:-}" ]; then
      used[$pkg]=1
    elif [ -z "${base[$pkg]}" ]; then
      echo "check-deps: $need comes from package $pkg, which $packages_name does not list"
      fail=1
    fi
  done
  for p in "${!listed[@]}"; do
    if [ -z "${used[$p]:-}" ]; then
      echo "check-deps: package $p is listed but provides nothing in needs.txt: name what needs it, or drop it"
      fail=1
    fi
  done
  return $fail
}

packages_name=${PACKAGES_FILE:-hack/packages.txt}
resolve
if [ "${1:-}" = --self-test ]; then
  check "$packages_file" >/dev/null || { echo "check-deps: self-test needs a passing check first"; check "$packages_file"; exit 1; }
  tmp=$(mktemp)
  trap 'rm -f "$tmp"' EXIT
  n=0
  while read -r p; do
    entries "$packages_file" | grep -vx "$p" > "$tmp"
    if check "$tmp" >/dev/null; then
      echo "check-deps: self-test: the check still passes without $p"
      exit 1
    fi
    n=$((n + 1))
  done < <(entries "$packages_file")
  echo "check-deps: self-test: dropping any one of the $n listed packages fails the check"
  exit 0
fi

if check "$packages_file"; then
  echo "check-deps: $(entries "$needs_file" | wc -l) needs, all from listed or base packages"
else
  echo "check-deps: fix hack/packages.txt or hack/needs.txt" >&2
  exit 1
fi
