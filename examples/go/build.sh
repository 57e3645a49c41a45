#!/usr/bin/env bash
# Build the Go example offline: protoc generates the faceid package from proto/faceid/v1/faceid.proto
# into a GOPATH-layout folder, and Go builds in GOPATH mode against the gRPC and protobuf sources
# that Debian's packages put in /usr/share/gocode (README.md lists them).  No module proxy is used.
#
#   bash examples/go/build.sh [BUILD_DIR]    # default examples/go/build; the binary is BUILD_DIR/faceid-example
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUILD=$(mkdir -p "${1:-$HERE/build}" && cd "${1:-$HERE/build}" && pwd)
GOCODE=${GOCODE:-/usr/share/gocode}
if [ -z "${HOME:-}" ] && [ -z "${GOCACHE:-}" ]; then export GOCACHE=$BUILD/cache; fi  # Go needs one

mkdir -p "$BUILD/src"
# go_package in the .proto puts the files in $BUILD/src/github.com/faceid/faceid/gen/go/faceid/v1.
protoc -I "$ROOT/proto" --go_out="$BUILD/src" --go-grpc_out="$BUILD/src" faceid/v1/faceid.proto
cd "$HERE"
GO111MODULE=off GOFLAGS= GOPATH="$BUILD:$GOCODE" go build -o "$BUILD/faceid-example" .
echo "built $BUILD/faceid-example"
