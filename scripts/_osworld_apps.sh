# The Debian packages of the apps OSWorld's tasks use, shared by scripts/install.sh --osworld-apps (which installs
# them, plus the google-chrome and vlc wrappers in /usr/local/bin) and scripts/test.sh (which runs that when one is
# missing). Sourced, not run.
OSWORLD_APP_PACKAGES="libreoffice-calc libreoffice-writer libreoffice-impress gimp vlc thunderbird socat"
osworld_apps_missing() {
  # prints what is missing (packages or wrappers); prints nothing when all are there
  local pkg
  for pkg in $OSWORLD_APP_PACKAGES; do
    dpkg -s "$pkg" >/dev/null 2>&1 || printf '%s ' "$pkg"
  done
  [ -x /usr/local/bin/google-chrome ] || printf 'google-chrome-wrapper '
  [ -x /usr/local/bin/vlc ] || printf 'vlc-wrapper '
}
