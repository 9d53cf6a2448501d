# Source this on a GPU machine that has CUDA and cmake but not Debian's C++ libraries
# (the lent H100/H200 image: Ubuntu 24.04, CUDA 13, no gRPC/abseil/nlohmann/pcre2/gtest).
# It unpacks the Debian bookworm .debs carried in .debs/ (made by scripts/fetch-device-debs.sh)
# under a prefix and points CMake, pkg-config and the loader at it.
#   source scripts/device-env.sh && cmake -S . -B build-gpu -DGLM_WITH_GRPC=OFF ...
GLM_DEPS_PREFIX=${GLM_DEPS_PREFIX:-/opt/glm-deps}
_glm_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if ! compgen -G "$_glm_root/.debs/*.deb" >/dev/null; then
  echo "device-env.sh: no .debs/*.deb here: run scripts/fetch-device-debs.sh and carry .debs" >&2
elif [ ! -f "$GLM_DEPS_PREFIX/.unpacked" ]; then
  mkdir -p "$GLM_DEPS_PREFIX"
  for deb in "$_glm_root"/.debs/*.deb; do dpkg -x "$deb" "$GLM_DEPS_PREFIX"; done
  touch "$GLM_DEPS_PREFIX/.unpacked"
fi
_glm_lib="$GLM_DEPS_PREFIX/usr/lib/x86_64-linux-gnu"
export CMAKE_PREFIX_PATH="$GLM_DEPS_PREFIX/usr:$_glm_lib/cmake${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export PKG_CONFIG_PATH="$_glm_lib/pkgconfig"
export PKG_CONFIG_SYSROOT_DIR="$GLM_DEPS_PREFIX"
export LD_LIBRARY_PATH="$_glm_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$GLM_DEPS_PREFIX/usr/bin:$PATH"
export CPATH="$GLM_DEPS_PREFIX/usr/include${CPATH:+:$CPATH}"
unset _glm_root _glm_lib
