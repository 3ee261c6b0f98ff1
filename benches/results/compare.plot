contender "1_thread" "2_thread"
"upstream directly (ceiling)" 166629 153585
"nginx, plain reverse proxy" 92966 87627
"HAProxy jwt_verify RS256" 24193 24399
"Pingora passthrough, defaults" 45697 42175
"Portcullis, authentication off" 42267 34346
"Portcullis RS256" 36493 32421
"Portcullis ES256" 36755 33869
