// pipe.node: a tiny N-API addon exporting pipe2() -> [readFd, writeFd].
//
// Why: Node's child_process gives a child 'pipe' stdio as *unix socketpairs*, not pipes. CRIU
// cannot checkpoint a container whose stdio are unix sockets connected to a process on the host
// (the peer is outside the dumped tree), and `runc restore` only re-maps real pipes onto the
// restored process's stdio (it records them in descriptors.json). So the runtime creates real
// pipes here and hands their fds to spawn() as stdio instead.
//
// Both ends are created with O_CLOEXEC, so they do not leak into other children; spawn() dup2()s
// the chosen end onto the child's 0/1/2, which clears the flag there. The caller owns both fds
// (close them with fs.closeSync or wrap them in streams).
//
// Built by scripts/setup.sh:
//   gcc -shared -fPIC -O2 -I<node include dir> -o build/pipe.node runtime/native/pipe.c
#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

// Throws Error("pipe2: <strerror>") with .code = "EMFILE" etc., .errno = -errno (as Node does)
// and .syscall = "pipe2".
static void throw_errno(napi_env env, int err) {
  const char *name = strerrorname_np(err);
  char msg[256];
  snprintf(msg, sizeof msg, "pipe2: %s", strerror(err));
  napi_value code_v, msg_v, error, errno_v, syscall_v;
  if (napi_create_string_utf8(env, name ? name : "EUNKNOWN", NAPI_AUTO_LENGTH, &code_v) != napi_ok ||
      napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &msg_v) != napi_ok ||
      napi_create_error(env, code_v, msg_v, &error) != napi_ok) {
    napi_throw_error(env, NULL, msg);
    return;
  }
  if (napi_create_int32(env, -err, &errno_v) == napi_ok)
    napi_set_named_property(env, error, "errno", errno_v);
  if (napi_create_string_utf8(env, "pipe2", NAPI_AUTO_LENGTH, &syscall_v) == napi_ok)
    napi_set_named_property(env, error, "syscall", syscall_v);
  napi_throw(env, error);
}

static napi_value js_pipe2(napi_env env, napi_callback_info info) {
  (void)info;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    throw_errno(env, errno);
    return NULL;
  }
  napi_value arr, r, w;
  if (napi_create_array_with_length(env, 2, &arr) != napi_ok || napi_create_int32(env, fds[0], &r) != napi_ok ||
      napi_create_int32(env, fds[1], &w) != napi_ok || napi_set_element(env, arr, 0, r) != napi_ok ||
      napi_set_element(env, arr, 1, w) != napi_ok) {
    close(fds[0]);
    close(fds[1]);
    napi_throw_error(env, NULL, "pipe2: could not build the result array");
    return NULL;
  }
  return arr;
}

// pending(fd) -> number of unread bytes in a pipe (FIONREAD). Before CRIU dumps a VPS for a move,
// the host reads the agent's pipe until this is 0: CRIU takes the data still sitting in an
// external pipe into its images and does not put it back into the new pipe on restore.
static napi_value js_pending(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out;
  int32_t fd = -1, n = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok) {
    napi_throw_type_error(env, NULL, "pending(fd): fd must be a number");
    return NULL;
  }
  if (ioctl(fd, FIONREAD, &n) != 0) {
    throw_errno(env, errno);
    return NULL;
  }
  napi_create_int32(env, n, &out);
  return out;
}

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */) {
  napi_value fn, pending;
  if (napi_create_function(env, "pipe2", NAPI_AUTO_LENGTH, js_pipe2, NULL, &fn) != napi_ok ||
      napi_set_named_property(env, exports, "pipe2", fn) != napi_ok ||
      napi_create_function(env, "pending", NAPI_AUTO_LENGTH, js_pending, NULL, &pending) != napi_ok ||
      napi_set_named_property(env, exports, "pending", pending) != napi_ok) {
    napi_throw_error(env, NULL, "pipe.node: could not register its functions");
    return NULL;
  }
  return exports;
}
