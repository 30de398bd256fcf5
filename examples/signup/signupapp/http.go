package signupapp

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
)

// maxBody bounds a signup request body; a signup is a few dozen bytes.
const maxBody = 64 << 10

// SignupRequest is the body of POST /signup and POST /signup-sync.
type SignupRequest struct {
	Email string `json:"email"`
}

// SignupResponse is the body of a successful signup.
type SignupResponse struct {
	User User `json:"user"`
	// EventID is the id of the published user.signup.completed event
	// (event-driven signup only).
	EventID string `json:"event_id,omitempty"`
	// Effects lists the side effects already done for the user.
	Effects []string `json:"effects"`
}

// ErrorResponse is the body of a failed request.
type ErrorResponse struct {
	Error string `json:"error"`
}

// Register adds the app's routes to mux:
//
//	POST /signup        event-driven: write the user, publish, return (201)
//	POST /signup-sync   synchronous: write the user and run every side effect
//	                    inline (201, or 502 when a side effect failed)
//	GET  /users/{id}    the user and the side effects done for it so far
//
// Both signup routes take {"email": "ada@example.com"} and answer 400 for a
// malformed body or email and 409 for an email already signed up.
func (a *App) Register(mux *http.ServeMux) {
	mux.HandleFunc("POST /signup", a.serveSignup)
	mux.HandleFunc("POST /signup-sync", a.serveSignupSync)
	mux.HandleFunc("GET /users/{id}", a.serveUser)
}

// Handler returns a handler serving only the app's routes (see Register).
func (a *App) Handler() http.Handler {
	mux := http.NewServeMux()
	a.Register(mux)
	return mux
}

func (a *App) serveSignup(w http.ResponseWriter, r *http.Request) {
	email, ok := readSignup(w, r)
	if !ok {
		return
	}
	u, ev, err := a.Signup(r.Context(), email)
	if err != nil {
		writeSignupError(w, err, http.StatusInternalServerError)
		return
	}
	writeJSON(w, http.StatusCreated, SignupResponse{User: u, EventID: ev.ID, Effects: a.effectsOrEmpty(u.ID)})
}

func (a *App) serveSignupSync(w http.ResponseWriter, r *http.Request) {
	email, ok := readSignup(w, r)
	if !ok {
		return
	}
	u, err := a.SignupSync(r.Context(), email)
	if err != nil {
		writeSignupError(w, err, http.StatusBadGateway)
		return
	}
	writeJSON(w, http.StatusCreated, SignupResponse{User: u, Effects: a.effectsOrEmpty(u.ID)})
}

func (a *App) serveUser(w http.ResponseWriter, r *http.Request) {
	u, ok := a.User(r.PathValue("id"))
	if !ok {
		writeJSON(w, http.StatusNotFound, ErrorResponse{Error: fmt.Sprintf("no user with id %q", r.PathValue("id"))})
		return
	}
	writeJSON(w, http.StatusOK, SignupResponse{User: u, Effects: a.effectsOrEmpty(u.ID)})
}

func (a *App) effectsOrEmpty(userID string) []string {
	if e := a.Effects(userID); e != nil {
		return e
	}
	return []string{}
}

func readSignup(w http.ResponseWriter, r *http.Request) (string, bool) {
	var req SignupRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody)).Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, ErrorResponse{Error: `the body must be JSON like {"email": "ada@example.com"}: ` + err.Error()})
		return "", false
	}
	return req.Email, true
}

// writeSignupError maps the app's errors to statuses; other errors get
// fallback.
func writeSignupError(w http.ResponseWriter, err error, fallback int) {
	status := fallback
	switch {
	case errors.Is(err, ErrInvalidEmail):
		status = http.StatusBadRequest
	case errors.Is(err, ErrEmailTaken):
		status = http.StatusConflict
	}
	writeJSON(w, status, ErrorResponse{Error: err.Error()})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
