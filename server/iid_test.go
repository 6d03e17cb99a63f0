// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"
)

func TestInstanceInfo(t *testing.T) {
	ts := startServer(t, nil)
	snd := ts.addSender("")
	other := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	day := func() string { return ts.now().UTC().Format(time.DateOnly) }
	newsDay := day()
	d.subscribe(app, snd.ID, "news")
	ts.clock.Advance(48 * time.Hour)
	alertsDay := day()
	if ans := ts.post("/iid/v1/"+token+"/rel/topics/alerts", snd.ServerKey, "application/json", ""); ans.status != http.StatusOK {
		t.Fatalf("subscribe: %d %s", ans.status, ans.body)
	}
	admin, err := OpenAdmin(context.Background(), AdminConfig{DataDir: ts.dir})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	rotated, err := admin.RotateToken(context.Background(), token, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	withTopics := `{"application":"` + app + `","authorizedEntity":"` + snd.ID + `","platform":"ANDROID","rel":{"topics":{"alerts":{"addDate":"` + alertsDay + `"},"news":{"addDate":"` + newsDay + `"}}}}`
	for _, tc := range []struct {
		name, key, path string
		status          int
		want            string // the JSON answer, or "" for any
	}{
		{"no details", snd.ServerKey, "/iid/info/" + rotated.Token, 200, `{"application":"` + app + `","authorizedEntity":"` + snd.ID + `","platform":"ANDROID"}`},
		{"details", snd.ServerKey, "/iid/info/" + rotated.Token + "?details=true", 200, withTopics},
		{"a replaced token in its grace period", snd.ServerKey, "/iid/info/" + token + "?details=true", 200, withTopics},
		{"unknown token", snd.ServerKey, "/iid/info/no-such-token", 404, `{"error":"` + iidNoInfo + `"}`},
		{"another sender's token", other.ServerKey, "/iid/info/" + rotated.Token, 403, `{"error":"PERMISSION_DENIED"}`},
		{"no key", "", "/iid/info/" + rotated.Token, 401, ""},
		{"wrong key", "wrong", "/iid/info/" + rotated.Token, 401, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, ts.base+tc.path, nil)
			if tc.key != "" {
				req.Header.Set("Authorization", "key="+tc.key)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var got any
			dec := json.NewDecoder(resp.Body)
			decodeErr := dec.Decode(&got)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if tc.want == "" {
				return
			}
			var want any
			json.Unmarshal([]byte(tc.want), &want)
			g, _ := json.Marshal(got)
			w, _ := json.Marshal(want)
			if decodeErr != nil || string(g) != string(w) {
				t.Errorf("answer %s (%v), want %s", g, decodeErr, w)
			}
		})
	}
}
