// SPDX-License-Identifier: Apache-2.0

package server

import (
	"os"
	"sync"
	"testing"
	"time"

	"tether/internal/natstest"
)

// The cluster that the tests of cluster mode share, started by the first
// of them.
var (
	natsOnce    sync.Once
	natsCluster *natstest.Cluster
	natsErr     error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if natsCluster != nil {
		natsCluster.Shutdown()
	}
	os.Exit(code)
}

// onClusterEnv, set, makes startServer run a cluster node rather than a
// server on a bbolt file.
const onClusterEnv = "TETHER_TEST_ON_CLUSTER"

// clusterConfig is a node's configuration for the state named prefix on
// the shared three-server JetStream cluster.
func clusterConfig(t testing.TB, prefix string) *NATSConfig {
	t.Helper()
	natsOnce.Do(func() {
		dir, err := os.MkdirTemp("", "tether-server-test-nats")
		if err != nil {
			natsErr = err
			return
		}
		natsCluster, natsErr = natstest.StartCluster(natstest.Config{Dir: dir})
	})
	if natsErr != nil {
		t.Fatalf("start a NATS cluster: %v", natsErr)
	}
	return &NATSConfig{URLs: natsCluster.URLs(), Prefix: prefix, Shards: 2, LeaseTTL: 3 * time.Second}
}

// TestOnCluster runs the server's tests of GCM's rules again with the
// state in JetStream: each of its servers is a cluster node.
func TestOnCluster(t *testing.T) {
	for _, tc := range []struct {
		name string
		test func(*testing.T)
	}{
		{"DeliverAckRedeliver", TestDeliverAckRedeliver},
		{"CollapseKeyReplaces", TestCollapseKeyReplaces},
		{"TTLExpiry", TestTTLExpiry},
		{"TTLZeroIsNowOrNever", TestTTLZeroIsNowOrNever},
		{"QueueSurvivesRestart", TestQueueSurvivesRestart},
		{"SessionReplaced", TestSessionReplaced},
		{"RegisterUnregister", TestRegisterUnregister},
		{"Window", TestWindow},
		{"CollapseKeysPerAppCapped", TestCollapseKeysPerAppCapped},
		{"NonCollapsiblePerAppCapped", TestNonCollapsiblePerAppCapped},
		{"DeviceRateLimit", TestDeviceRateLimit},
		{"OldAgentDropsNotices", TestOldAgentDropsNotices},
		{"TopicSendAnswers", TestTopicSendAnswers},
		{"TopicFanOut", TestTopicFanOut},
		{"TopicTimeToLiveZero", TestTopicTimeToLiveZero},
		{"TopicFanOutInBatches", TestTopicFanOutInBatches},
		{"TopicRateLimit", TestTopicRateLimit},
		{"SubscribeFrames", TestSubscribeFrames},
		{"InstanceIDTopicManagement", TestInstanceIDTopicManagement},
		{"UpstreamWebhookRetryAndDedupe", TestUpstreamWebhookRetryAndDedupe},
		{"UpstreamRefused", TestUpstreamRefused},
		{"UpstreamWithoutWebhookKeptUntilTTL", TestUpstreamWithoutWebhookKeptUntilTTL},
		{"UpstreamDroppedWhenTTLRunsOut", TestUpstreamDroppedWhenTTLRunsOut},
		{"UpstreamSurvivesRestart", TestUpstreamSurvivesRestart},
		{"UpstreamTooManyMessages", TestUpstreamTooManyMessages},
		{"UpstreamRateLimit", TestUpstreamRateLimit},
		{"UpstreamFairAcrossDevices", TestUpstreamFairAcrossDevices},
		{"UpstreamLaneWindow", TestUpstreamLaneWindow},
		{"MetricsXMPP", TestMetricsXMPP},
		{"MetricsRefusedHellos", TestMetricsRefusedHellos},
		{"DeliveryReceipts", TestDeliveryReceipts},
		{"TokenRotation", TestTokenRotation},
		{"CCSDownstream", TestCCSDownstream},
		{"CCSUpstream", TestCCSUpstream},
		{"CCSReceipt", TestCCSReceipt},
		{"PowerModeDecidesWhatGoesAtOnce", TestPowerModeDecidesWhatGoesAtOnce},
		{"TTLZeroToIdleDevice", TestTTLZeroToIdleDevice},
		{"BatteryFlushesBehindHighPriority", TestBatteryFlushesBehindHighPriority},
		{"ConcurrentSendsAllStored", TestConcurrentSendsAllStored},
		{"ProbeLeavesTheSessionAlone", TestProbeLeavesTheSessionAlone},
		{"ReconnectLimit", TestReconnectLimit},
		{"WebPushDelivers", TestWebPushDelivers},
		{"WebPushRefusals", TestWebPushRefusals},
		{"WebPushVAPID", TestWebPushVAPID},
		{"WebPushUrgency", TestWebPushUrgency},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(onClusterEnv, "1")
			tc.test(t)
		})
	}
}
