# The chart of benches/compare.sh: requests per second by contender and worker threads.
#   gnuplot -e "data='FILE'; out='FILE.png'" benches/compare.gnuplot
set terminal pngcairo size 1100,560 font "sans,11" noenhanced
set output out
set title "GET with a valid RS256 token, 1,000 distinct tokens (contender pinned to one core)"
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set ylabel "requests per second"
set format y "%.0f"
set yrange [0:*]
set grid ytics
set key top right
set xtics rotate by -25 scale 0 font ",10"
set bmargin 7
plot data every ::1 using 2:xtic(1) title "1 worker thread", '' every ::1 using 3 title "2 worker threads"
