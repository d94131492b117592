// One error class for everything the addon throws (better-sqlite3 style): JS hands its
// VhostError constructor to setErrorClass() at load time; C++ builds errors through it with a
// string code so JS can branch on err.code. Until it is set, plain Error is used. Errno values
// become codes through ErrnoName / ThrowErrno here, and nowhere else.
#pragma once
#include <napi.h>

#include <string>

namespace vbc {

// Throws (as a C++ exception carrying a JS error) VhostError(message, code).
[[noreturn]] void ThrowError(Napi::Env env, const std::string& code, const std::string& message);
// Builds (without throwing) a VhostError(message, code) value, e.g. to pass to a callback.
Napi::Value MakeError(Napi::Env env, const std::string& code, const std::string& message);

// "EBADF", "EIO", ... for an errno value ("E<number>" when the C library has no name). The one
// errno-name helper of the addon (io, frontend and the vhost back end use it).
std::string ErrnoName(int err);
// Throws VhostError("<what>: <strerror>", <errno name>).
[[noreturn]] void ThrowErrno(Napi::Env env, const std::string& what, int err);

}  // namespace vbc
