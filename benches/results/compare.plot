contender "1_thread" "2_thread"
"upstream directly (ceiling)" 154904 150973
"nginx, plain reverse proxy" 86852 88581
"HAProxy jwt_verify RS256" 23642 24009
"Pingora passthrough, defaults" 43564 41693
"Portcullis, authentication off" 39218 34282
"Portcullis RS256" 31313 30795
"Portcullis ES256" 31837 30747
