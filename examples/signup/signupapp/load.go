package signupapp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// Load describes a burst of signups sent over HTTP by concurrent clients.
type Load struct {
	// Client sends the requests; nil means http.DefaultClient.
	Client *http.Client
	// BaseURL is the server's address, such as "http://127.0.0.1:8080".
	BaseURL string
	// Path is "/signup" or "/signup-sync".
	Path string
	// Signups is how many signups to send.
	Signups int
	// Clients is how many signups are in flight at once.
	Clients int
	// EmailPrefix names the users: PREFIX-1@example.com and so on. Use a
	// different prefix per run against one app, since emails are unique.
	EmailPrefix string
}

// LoadResult is what a Load measured.
type LoadResult struct {
	Path     string `json:"path"`
	Requests int    `json:"requests"`
	// Failed counts responses other than 201 and requests that got no
	// response.
	Failed int `json:"failed"`
	// FirstFailure describes the first failure, if any.
	FirstFailure string `json:"first_failure,omitempty"`
	// Durations are the response times of every request, sorted.
	Durations []time.Duration `json:"-"`
	// Elapsed is the wall time of the whole load.
	Elapsed time.Duration `json:"-"`
	// UserIDs are the ids of the users created, in no particular order.
	UserIDs []string `json:"-"`
	// EventIDs are the ids of the events the event-driven signups
	// published, in no particular order.
	EventIDs []string `json:"-"`
}

// Percentile returns the response time below which a fraction p (0 to 1)
// of the requests fell, by the nearest-rank method; 0 without requests.
func (r LoadResult) Percentile(p float64) time.Duration {
	n := len(r.Durations)
	if n == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(n))) - 1
	return r.Durations[min(max(i, 0), n-1)]
}

// Run sends the signups and measures each response time. It fails for an
// invalid Load or when ctx ends; failed signups are counted, not returned.
func (l Load) Run(ctx context.Context) (LoadResult, error) {
	switch {
	case l.Signups < 1:
		return LoadResult{}, fmt.Errorf("signupapp: Load.Signups is %d; send at least 1", l.Signups)
	case l.Clients < 1:
		return LoadResult{}, fmt.Errorf("signupapp: Load.Clients is %d; use at least 1", l.Clients)
	case !strings.HasPrefix(l.BaseURL, "http://") && !strings.HasPrefix(l.BaseURL, "https://"):
		return LoadResult{}, fmt.Errorf("signupapp: Load.BaseURL %q must start with http:// or https://", l.BaseURL)
	case l.EmailPrefix == "":
		return LoadResult{}, errors.New("signupapp: Load.EmailPrefix is empty; name the run, such as \"sync\"")
	}
	client := l.Client
	if client == nil {
		client = http.DefaultClient
	}
	url := strings.TrimSuffix(l.BaseURL, "/") + l.Path
	res := LoadResult{Path: l.Path, Requests: l.Signups}

	var mu sync.Mutex
	next := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for range min(l.Clients, l.Signups) {
		wg.Go(func() {
			for i := range next {
				email := fmt.Sprintf("%s-%d@example.com", l.EmailPrefix, i)
				d, ok, failure := signupOnce(ctx, client, url, email)
				mu.Lock()
				res.Durations = append(res.Durations, d)
				if failure != "" {
					res.Failed++
					if res.FirstFailure == "" {
						res.FirstFailure = failure
					}
				} else {
					res.UserIDs = append(res.UserIDs, ok.User.ID)
					if ok.EventID != "" {
						res.EventIDs = append(res.EventIDs, ok.EventID)
					}
				}
				mu.Unlock()
			}
		})
	}
send:
	for i := 1; i <= l.Signups; i++ {
		select {
		case next <- i:
		case <-ctx.Done():
			break send
		}
	}
	close(next)
	wg.Wait()
	res.Elapsed = time.Since(start)
	slices.Sort(res.Durations)
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("signupapp: load on %s stopped: %w", l.Path, err)
	}
	return res, nil
}

// signupOnce posts one signup and returns its response time, the response,
// and a description of the failure if it failed.
func signupOnce(ctx context.Context, client *http.Client, url, email string) (time.Duration, SignupResponse, string) {
	var ok SignupResponse
	body, _ := json.Marshal(SignupRequest{Email: email})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, ok, err.Error()
	}
	req.Header.Set("Content-Type", "application/json")
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return time.Since(start), ok, err.Error()
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	d := time.Since(start)
	if err != nil {
		return d, ok, "reading the response: " + err.Error()
	}
	if resp.StatusCode != http.StatusCreated {
		var e ErrorResponse
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return d, ok, fmt.Sprintf("%d: %s", resp.StatusCode, e.Error)
		}
		return d, ok, fmt.Sprintf("%d: %s", resp.StatusCode, bytes.TrimSpace(data))
	}
	if err := json.Unmarshal(data, &ok); err != nil {
		return d, ok, "decoding the response: " + err.Error()
	}
	return d, ok, ""
}
