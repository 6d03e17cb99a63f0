# SPDX-License-Identifier: Apache-2.0
# tether-server's container image: the static binary on an empty base, run
# as an unprivileged numeric user, the store on a volume. `make image`
# builds it with docker or podman; docs/deploy.md shows how to run it.
#
# packaging/container/rootfs.sh lays out every file of the image, and
# cross/container_test.go builds the same tree in a directory and runs
# this file's ENTRYPOINT, CMD and HEALTHCHECK from it with chroot.

# The user the server runs as, also the owner of the data volume.
ARG UID=10001

FROM golang:1.26 AS build
ARG UID
ARG VERSION=dev
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "-s -w -X main.version=${VERSION}" \
      -o /tether-server ./cmd/tether-server \
 && packaging/container/rootfs.sh /tether-server /rootfs "${UID}"

FROM scratch
ARG UID
# A copy from a stage keeps the owners rootfs.sh gave.
COPY --from=build /rootfs /
USER ${UID}:${UID}
VOLUME /var/lib/tether-server
# Devices and app servers; XMPP on 5235 and metrics on 9464 when the
# config turns them on.
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=10s CMD ["/usr/bin/tether-server", "healthcheck"]
ENTRYPOINT ["/usr/bin/tether-server"]
CMD ["serve", "--config", "/etc/tether/server.toml", "--listen", ":8080"]
