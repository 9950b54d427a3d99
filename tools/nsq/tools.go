//go:build tools

// Package nsqtools pins the NSQ release that tests and `just dev` run. It is
// never compiled into anything: scripts/setup builds nsqd, nsqlookupd and
// nsqadmin from this module with `go build`, because `go install …@v1.3.0`
// refuses modules whose go.mod has a replace directive (nsq's does).
package nsqtools

import (
	_ "github.com/nsqio/nsq/apps/nsqadmin"
	_ "github.com/nsqio/nsq/apps/nsqd"
	_ "github.com/nsqio/nsq/apps/nsqlookupd"
)
